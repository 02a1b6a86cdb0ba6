// A persistent pool of worker threads for the batch solver.
//
// The workers live for the whole process, so that every worker keeps its per-thread solver
// buffers between batches (training solves a batch at every step). One job runs at a time; a
// second caller waits. After fork() the child gets a fresh pool (the parent's threads do not
// exist there).
#pragma once

#include <cstddef>
#include <functional>

namespace cops {
namespace detail {

// Runs f(i) for every i in [0, n) on at most `num_threads` threads (the calling thread is one of
// them) and returns when all are done. f must not throw.
void parallel_for(size_t n, int num_threads, const std::function<void(size_t)>& f);

}  // namespace detail
}  // namespace cops
