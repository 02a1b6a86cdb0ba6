#include "thread_pool.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__unix__) || defined(__APPLE__)
#include <unistd.h>
#define COPS_HAVE_GETPID 1
#endif

namespace cops {
namespace detail {

namespace {

class ThreadPool {
 public:
  void run(size_t n, int num_threads, const std::function<void(size_t)>& f) {
    std::lock_guard<std::mutex> job_lock(job_mutex_);  // one job at a time
    const int helpers = std::max(0, std::min<int>(num_threads, static_cast<int>(n)) - 1);
    ensure_workers(helpers);
    {
      std::lock_guard<std::mutex> lock(m_);
      f_ = &f;
      n_ = n;
      next_.store(0);
      wanted_ = helpers;
      running_ = helpers;
      ++generation_;
    }
    cv_.notify_all();
    work();
    std::unique_lock<std::mutex> lock(m_);
    done_cv_.wait(lock, [&] { return running_ == 0; });
    f_ = nullptr;
  }

 private:
  void ensure_workers(int count) {
    while (static_cast<int>(workers_.size()) < count) {
      const int index = static_cast<int>(workers_.size());
      workers_.emplace_back([this, index] { loop(index); });
      workers_.back().detach();  // the pool is never destroyed; idle workers end with the process
    }
  }

  void work() {
    for (;;) {
      const size_t i = next_.fetch_add(1);
      if (i >= n_) return;
      (*f_)(i);
    }
  }

  void loop(int index) {
    uint64_t seen = 0;
    for (;;) {
      {
        std::unique_lock<std::mutex> lock(m_);
        cv_.wait(lock, [&] { return generation_ != seen; });
        seen = generation_;
        if (index >= wanted_) continue;  // not needed for this job
      }
      work();
      {
        std::lock_guard<std::mutex> lock(m_);
        if (--running_ == 0) done_cv_.notify_all();
      }
    }
  }

  std::mutex job_mutex_;
  std::mutex m_;
  std::condition_variable cv_, done_cv_;
  std::vector<std::thread> workers_;
  const std::function<void(size_t)>* f_ = nullptr;
  size_t n_ = 0;
  std::atomic<size_t> next_{0};
  int wanted_ = 0;
  int running_ = 0;
  uint64_t generation_ = 0;
};

ThreadPool& pool() {
  // Intentionally leaked: destroying it at exit would race with the process teardown.
  static ThreadPool* instance = nullptr;
#ifdef COPS_HAVE_GETPID
  static pid_t owner = 0;
  static std::mutex guard;
  std::lock_guard<std::mutex> lock(guard);
  if (instance == nullptr || owner != getpid()) {  // first use, or first use after fork()
    instance = new ThreadPool();
    owner = getpid();
  }
#else
  static std::once_flag once;
  std::call_once(once, [] { instance = new ThreadPool(); });
#endif
  return *instance;
}

}  // namespace

void parallel_for(size_t n, int num_threads, const std::function<void(size_t)>& f) {
  if (n == 0) return;
  if (num_threads <= 1 || n == 1) {
    for (size_t i = 0; i < n; ++i) f(i);
    return;
  }
  pool().run(n, num_threads, f);
}

}  // namespace detail
}  // namespace cops
