// Per-cluster adjacency used by GAEC: for every cluster, a map neighbour cluster -> edge id.
//
// All maps start inside one arena laid out like a CSR adjacency (node i owns the slots
// [offsets[i], offsets[i+1])), so building them costs one pass and no allocation per node, and
// the maps of nearby pixels are nearby in memory. Small maps are unsorted arrays scanned
// linearly (a pixel has about 20 neighbours). A map that must grow beyond its arena slots moves
// to storage of its own; once it holds more than kSmall entries it becomes an open-addressing
// hash table (linear probing, tombstones), so that "is cluster x adjacent to cluster s" stays
// O(1) for the large clusters GAEC grows by accretion.
//
// Entries whose edge died may be left in place (lazy deletion: GAEC does not touch the map of a
// neighbour whose edge to a merged cluster became parallel to an existing one); they are keyed by
// a cluster that no longer exists, so lookups never match them, `for_each` skips them and growing
// a map drops them. `alive` (one byte per cluster id, i.e. per node) tells which keys live: an
// entry is dead exactly when its key is (the caller clears alive[m] when m is merged away). One
// byte per node instead of one per edge keeps this check in cache.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#if defined(__GNUC__) || defined(__clang__)
#define COPS_PREFETCH(addr) __builtin_prefetch(addr)
#else
#define COPS_PREFETCH(addr) ((void)0)
#endif

namespace cops {
namespace detail {

class AdjacencyTables {
 public:
  struct Slot {
    int32_t key;  // neighbour cluster; kEmpty / kTomb in hash mode
    int32_t val;  // edge id
  };
  static constexpr int32_t kEmpty = -1;
  static constexpr int32_t kTomb = -2;
  static constexpr int32_t kSmall = 32;

  // offsets: [n + 1] CSR offsets; nbr/eid: [offsets[n]] neighbour and edge id per slot;
  // alive: [n] per cluster id.
  void init(int32_t n, const int64_t* offsets, const int32_t* nbr, const int32_t* eid, const uint8_t* alive) {
    alive_ = alive;
    arena_.resize(static_cast<size_t>(offsets[n]));
    head_.assign(n, Head{});
    for (auto& v : own_) recycle(v);
    own_.resize(n);
    for (int32_t i = 0; i < n; ++i) {
      Head& h = head_[i];
      h.data = arena_.data() + offsets[i];
      h.size = h.cap = static_cast<int32_t>(offsets[i + 1] - offsets[i]);
      for (int64_t p = offsets[i]; p < offsets[i + 1]; ++p) arena_[p] = {nbr[p], eid[p]};
    }
  }

  int32_t size(int32_t c) const { return head_[c].size; }

  void prefetch(int32_t c, int32_t key) const {
    const Head& h = head_[c];
    if (h.hashed) COPS_PREFETCH(h.data + (hash(key) & static_cast<uint32_t>(h.cap - 1)));
  }
  void prefetch_head(int32_t c) const { COPS_PREFETCH(&head_[c]); }
  void prefetch_data(int32_t c) const { COPS_PREFETCH(head_[c].data); }

  int32_t find(int32_t c, int32_t key) const {
    const Head& h = head_[c];
    if (!h.hashed) {
      for (int32_t i = 0; i < h.size; ++i)
        if (h.data[i].key == key) return h.data[i].val;
      return -1;
    }
    const uint32_t mask = static_cast<uint32_t>(h.cap) - 1;
    for (uint32_t p = hash(key) & mask;; p = (p + 1) & mask) {
      const Slot& s = h.data[p];
      if (s.key == key) return s.val;
      if (s.key == kEmpty) return -1;
    }
  }

  // `key` must not be present.
  void insert(int32_t c, int32_t key, int32_t val) {
    Head& h = head_[c];
    if (!h.hashed) {
      if (h.size < h.cap) {
        h.data[h.size++] = {key, val};
        return;
      }
      if (h.size < kSmall) {
        grow_small(c, kSmall);
        head_[c].data[head_[c].size++] = {key, val};
        return;
      }
      rehash(c, 4 * (h.size + 1));
    } else if (2 * (h.used + 1) > h.cap) {
      rehash(c, 4 * (h.size + 1));
    }
    insert_hashed(head_[c], key, val);
  }

  void erase(int32_t c, int32_t key) {
    Head& h = head_[c];
    if (!h.hashed) {
      for (int32_t i = 0; i < h.size; ++i) {
        if (h.data[i].key == key) {
          h.data[i] = h.data[--h.size];
          return;
        }
      }
      return;
    }
    const uint32_t mask = static_cast<uint32_t>(h.cap) - 1;
    for (uint32_t p = hash(key) & mask;; p = (p + 1) & mask) {
      Slot& s = h.data[p];
      if (s.key == key) {
        s.key = kTomb;
        --h.size;
        return;
      }
      if (s.key == kEmpty) return;
    }
  }

  // Replaces key `old_key` (present) by `new_key` (absent), keeping its value.
  void rekey(int32_t c, int32_t old_key, int32_t new_key) {
    Head& h = head_[c];
    if (!h.hashed) {
      for (int32_t i = 0; i < h.size; ++i) {
        if (h.data[i].key == old_key) {
          h.data[i].key = new_key;
          return;
        }
      }
      return;
    }
    const int32_t val = find(c, old_key);
    erase(c, old_key);
    insert(c, new_key, val);
  }

  // Calls f(key, val) for every entry whose edge is alive.
  template <class F>
  void for_each(int32_t c, F&& f) const {
    const Head& h = head_[c];
    if (!h.hashed) {
      for (int32_t i = 0; i < h.size; ++i)
        if (alive_[h.data[i].key]) f(h.data[i].key, h.data[i].val);
      return;
    }
    for (int32_t i = 0; i < h.cap; ++i)
      if (h.data[i].key >= 0 && alive_[h.data[i].key]) f(h.data[i].key, h.data[i].val);
  }

  void release(int32_t c) {
    if (head_[c].owned) recycle(own_[c]);  // most maps never leave the arena: own_[c] stays cold
    head_[c] = Head{};
  }

 private:
  struct Head {
    Slot* data = nullptr;
    int32_t size = 0;  // live entries
    int32_t cap = 0;   // slots available at data
    int32_t used = 0;  // live + tombstones (hash mode)
    int16_t hashed = 0;
    int16_t owned = 0;  // data lives in own_[c], not in the arena
  };

  static uint32_t hash(int32_t key) { return (static_cast<uint32_t>(key) * 2654435761u) >> 7; }

  static void insert_hashed(Head& h, int32_t key, int32_t val) {
    const uint32_t mask = static_cast<uint32_t>(h.cap) - 1;
    for (uint32_t p = hash(key) & mask;; p = (p + 1) & mask) {
      Slot& s = h.data[p];
      if (s.key < 0) {
        if (s.key == kEmpty) ++h.used;
        s = {key, val};
        ++h.size;
        return;
      }
    }
  }

  // Storage of a given capacity, from the pool of released storage when possible (this object
  // lives per thread across solves, so the pool saves allocations and page faults).
  std::vector<Slot> take(int32_t cap) {
    std::vector<Slot> v;
    const int b = bucket(cap);
    if (b < kBuckets && !pool_[b].empty()) {
      v.swap(pool_[b].back());
      pool_[b].pop_back();
    }
    v.resize(cap);
    return v;
  }
  void recycle(std::vector<Slot>& v) {
    if (v.capacity() == 0) return;
    const int b = bucket(static_cast<int32_t>(v.capacity()));
    if (b < kBuckets && static_cast<size_t>(v.capacity()) == (size_t{1} << b)) {
      v.clear();
      pool_[b].emplace_back();
      pool_[b].back().swap(v);
    } else {
      std::vector<Slot>().swap(v);
    }
  }
  static int bucket(int32_t cap) {
    int b = 0;
    while ((int64_t{1} << b) < cap) ++b;
    return b;
  }

  void grow_small(int32_t c, int32_t cap) {
    Head& h = head_[c];
    std::vector<Slot> fresh = take(cap);
    int32_t live = 0;
    for (int32_t i = 0; i < h.size; ++i)
      if (alive_[h.data[i].key]) fresh[live++] = h.data[i];
    own_[c].swap(fresh);
    recycle(fresh);
    h.data = own_[c].data();
    h.cap = cap;
    h.size = live;
    h.owned = 1;
  }

  void rehash(int32_t c, int32_t min_capacity) {
    Head& h = head_[c];
    int32_t cap = 64;
    while (cap < min_capacity) cap <<= 1;
    std::vector<Slot> fresh = take(cap);
    std::fill(fresh.begin(), fresh.end(), Slot{kEmpty, 0});
    Head nh;
    nh.data = fresh.data();
    nh.cap = cap;
    nh.hashed = 1;
    nh.owned = 1;
    if (!h.hashed) {
      for (int32_t i = 0; i < h.size; ++i)
        if (alive_[h.data[i].key]) insert_hashed(nh, h.data[i].key, h.data[i].val);
    } else {
      for (int32_t i = 0; i < h.cap; ++i)
        if (h.data[i].key >= 0 && alive_[h.data[i].key]) insert_hashed(nh, h.data[i].key, h.data[i].val);
    }
    own_[c].swap(fresh);
    recycle(fresh);
    h = nh;
  }

  const uint8_t* alive_ = nullptr;
  std::vector<Slot> arena_;
  std::vector<Head> head_;
  std::vector<std::vector<Slot>> own_;
  static constexpr int kBuckets = 31;
  std::vector<std::vector<Slot>> pool_[kBuckets];  // released storage by log2(capacity)
};

}  // namespace detail
}  // namespace cops
