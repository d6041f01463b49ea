// StdMutex: std::mutex with Clang thread-safety annotations, so members can be
// declared ABSL_GUARDED_BY(mu_) and scripts/check_thread_safety.sh
// (clang -Wthread-safety) proves every access holds the lock.
//
//   mutable StdMutex mu_;
//   std::condition_variable cv_;
//   int pending_ ABSL_GUARDED_BY(mu_) = 0;
//
//   void Add() {
//     StdMutexLock lock(&mu_);
//     ++pending_;
//     cv_.notify_all();
//   }
//   bool WaitEmpty(absl::Time deadline) {
//     StdMutexLock lock(&mu_);
//     return cv_.wait_until(lock.native(), absl::ToChronoTime(deadline),
//                           [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return pending_ == 0; });
//   }
//
// Why not absl::Mutex (which carries the same annotations): Debian's libabsl is
// not built with ThreadSanitizer, so TSan cannot see absl::Mutex's
// happens-before edges and reports false races; std::mutex is intercepted by
// TSan. kvstore, which has a TSan run, uses this; the rest of the tree uses
// absl::Mutex.
//
// Condition variables: waits go through StdMutexLock::native(), the
// std::unique_lock a std::condition_variable needs (so waits stay plain
// std::condition_variable, which TSan understands). The wait releases and
// re-takes the mutex; to the analysis the lock stays held throughout, which is
// what the code after the wait sees. A predicate lambda is analysed on its own
// and must be annotated ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_).
//
// Thread safety: StdMutex is a mutex; a StdMutexLock belongs to the thread
// that made it.
#ifndef TANDEM_COMMON_MUTEX_H_
#define TANDEM_COMMON_MUTEX_H_

#include <mutex>

#include "absl/base/thread_annotations.h"

namespace tandem {

class ABSL_LOCKABLE StdMutex {
 public:
  StdMutex() = default;
  StdMutex(const StdMutex&) = delete;
  StdMutex& operator=(const StdMutex&) = delete;

  void Lock() ABSL_EXCLUSIVE_LOCK_FUNCTION() { mu_.lock(); }
  void Unlock() ABSL_UNLOCK_FUNCTION() { mu_.unlock(); }
  // Tells the analysis the caller holds the lock where it cannot see that
  // (a callback invoked under it). Checks nothing at run time.
  void AssertHeld() const ABSL_ASSERT_EXCLUSIVE_LOCK() {}

 private:
  friend class StdMutexLock;
  std::mutex mu_;
};

// Holds `mu` from construction to destruction.
class ABSL_SCOPED_LOCKABLE StdMutexLock {
 public:
  explicit StdMutexLock(StdMutex* mu) ABSL_EXCLUSIVE_LOCK_FUNCTION(mu) : lock_(mu->mu_) {}
  ~StdMutexLock() ABSL_UNLOCK_FUNCTION() {}
  StdMutexLock(const StdMutexLock&) = delete;
  StdMutexLock& operator=(const StdMutexLock&) = delete;

  // Lets go of the mutex for a stretch of work and takes it back; the
  // analysis checks nothing guarded is touched in between.
  void Unlock() ABSL_UNLOCK_FUNCTION() { lock_.unlock(); }
  void Lock() ABSL_EXCLUSIVE_LOCK_FUNCTION() { lock_.lock(); }

  // For std::condition_variable::wait*, which return with it locked again.
  // A predicate reading guarded members says so:
  //   cv_.wait(lock.native(), [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stop_; });
  std::unique_lock<std::mutex>& native() { return lock_; }

 private:
  std::unique_lock<std::mutex> lock_;
};

}  // namespace tandem

#endif  // TANDEM_COMMON_MUTEX_H_
