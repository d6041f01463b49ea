// A small Prometheus client: counters, gauges and histograms with labels,
// rendered in the text exposition format 0.0.4 (what `GET /metrics` serves).
//
//   MetricsRegistry& registry = DefaultMetricsRegistry();
//   HistogramFamily* ttft = registry.Histogram("tandem_ttft_seconds", "Time to first token",
//                                              {"policy"}, ExponentialBuckets(0.001, 2, 16));
//   Histogram* kv = ttft->WithLabels({"kv"});   // look up once, keep the pointer
//   kv->Observe(0.12);                          // hot path: a few atomic adds
//   registry.Counter("tandem_requests_total", "Requests", {})->WithLabels({})->Increment();
//   std::string text = registry.RenderPrometheus();
//
// Ownership: the registry owns its families and a family owns its children;
// the pointers returned stay valid for the registry's lifetime (the default
// registry lives for the whole process and is never destroyed).
//
// Thread safety: everything is thread-safe. Observe/Increment/Set are atomic
// operations without locks; creating a family or looking up a child takes a
// mutex (so hot paths keep the child pointer). RenderPrometheus reads each
// value atomically, but not all values at one instant.
#ifndef TANDEM_COMMON_METRICS_H_
#define TANDEM_COMMON_METRICS_H_

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace tandem {

// A value that only goes up (requests served, bytes sent).
class Counter {
 public:
  // `delta` must be >= 0; negative deltas are ignored.
  void Increment(double delta = 1.0);
  double Value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0.0};
};

// A value that goes up and down (requests in flight, pool usage).
class Gauge {
 public:
  void Set(double value) { value_.store(value, std::memory_order_relaxed); }
  void Increment(double delta = 1.0);
  void Decrement(double delta = 1.0) { Increment(-delta); }
  double Value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0.0};
};

// Observations counted into fixed buckets (upper bounds, inclusive).
class Histogram {
 public:
  // `bounds` strictly increasing and finite (the registry sanitises them);
  // the +Inf bucket is implicit.
  explicit Histogram(const std::vector<double>* bounds);
  void Observe(double value);

  // Count of observations <= bounds[i] (i < bounds.size()) or in total
  // (i == bounds.size()); cumulative, as exposed.
  uint64_t CumulativeCount(size_t i) const;
  uint64_t Count() const { return CumulativeCount(bounds_->size()); }
  double Sum() const { return sum_.load(std::memory_order_relaxed); }

 private:
  const std::vector<double>* bounds_;                 // owned by the family
  std::unique_ptr<std::atomic<uint64_t>[]> buckets_;  // bounds_->size() + 1, not cumulative
  std::atomic<double> sum_{0.0};
};

enum class MetricType { kCounter, kGauge, kHistogram };

// One metric name with its label names; children are per label values.
template <typename Child>
class MetricFamily {
 public:
  MetricFamily(std::string name, std::string help, std::vector<std::string> label_names, MetricType type,
               std::vector<double> bounds = {})
      : name_(std::move(name)),
        help_(std::move(help)),
        label_names_(std::move(label_names)),
        type_(type),
        bounds_(std::move(bounds)) {}

  // The child for these label values, created on first use. Values are
  // matched to label names by position; missing values are "" and extra
  // values are dropped. Never returns null.
  Child* WithLabels(const std::vector<std::string>& values);

  const std::string& name() const { return name_; }
  const std::string& help() const { return help_; }
  const std::vector<std::string>& label_names() const { return label_names_; }
  MetricType type() const { return type_; }
  const std::vector<double>& bounds() const { return bounds_; }

  // Calls fn(label_values, child) for each child in label order.
  template <typename Fn>
  void ForEach(Fn fn) const {
    absl::MutexLock lock(&mu_);
    for (const auto& [values, child] : children_) fn(values, *child);
  }

 private:
  const std::string name_;
  const std::string help_;
  const std::vector<std::string> label_names_;
  const MetricType type_;
  const std::vector<double> bounds_;
  mutable absl::Mutex mu_;
  std::map<std::vector<std::string>, std::unique_ptr<Child>> children_ ABSL_GUARDED_BY(mu_);
};

using CounterFamily = MetricFamily<Counter>;
using GaugeFamily = MetricFamily<Gauge>;
using HistogramFamily = MetricFamily<Histogram>;

class MetricsRegistry {
 public:
  MetricsRegistry() = default;
  MetricsRegistry(const MetricsRegistry&) = delete;
  MetricsRegistry& operator=(const MetricsRegistry&) = delete;

  // Each returns the family named `name`, creating it on first call; later
  // calls with the same name and type return the same family (so any
  // component may declare the metrics it records). A name already used with
  // another type or other label names is a programming error: it is reported
  // on stderr and the returned family is private (recorded, never rendered).
  // Names follow Prometheus rules ([a-zA-Z_:][a-zA-Z0-9_:]*); counters
  // should end in _total.
  CounterFamily* Counter(std::string_view name, std::string_view help,
                         const std::vector<std::string>& label_names = {});
  GaugeFamily* Gauge(std::string_view name, std::string_view help,
                     const std::vector<std::string>& label_names = {});
  // `bounds`: bucket upper bounds; they are sorted, de-duplicated and
  // stripped of non-finite values (+Inf is always the last bucket).
  HistogramFamily* Histogram(std::string_view name, std::string_view help,
                             const std::vector<std::string>& label_names, std::vector<double> bounds);

  // Every family, sorted by name, in text format 0.0.4
  // (Content-Type: text/plain; version=0.0.4; charset=utf-8).
  std::string RenderPrometheus() const;

 private:
  struct Entry {
    MetricType type;
    std::unique_ptr<CounterFamily> counter;
    std::unique_ptr<GaugeFamily> gauge;
    std::unique_ptr<HistogramFamily> histogram;
  };
  Entry* FindOrAdd(std::string_view name, MetricType type, const std::vector<std::string>& label_names,
                   bool* conflict) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  mutable absl::Mutex mu_;
  std::map<std::string, Entry, std::less<>> families_ ABSL_GUARDED_BY(mu_);
  std::vector<Entry> orphans_ ABSL_GUARDED_BY(mu_);  // conflicting declarations
};

// The process-wide registry every component records into and /metrics serves.
MetricsRegistry& DefaultMetricsRegistry();

// Bucket helpers: start, start*factor, ... (count bounds); start, start+width, ...
std::vector<double> ExponentialBuckets(double start, double factor, int count);
std::vector<double> LinearBuckets(double start, double width, int count);

// Escapes a label value for the exposition format (\\, \", \n).
std::string EscapeLabelValue(std::string_view value);

// ---- implementation of the template ----
template <typename Child>
Child* MetricFamily<Child>::WithLabels(const std::vector<std::string>& values) {
  std::vector<std::string> key(values);
  key.resize(label_names_.size());
  absl::MutexLock lock(&mu_);
  auto it = children_.find(key);
  if (it != children_.end()) return it->second.get();
  std::unique_ptr<Child> child;
  if constexpr (std::is_same_v<Child, Histogram>) {
    child = std::make_unique<Histogram>(&bounds_);
  } else {
    child = std::make_unique<Child>();
  }
  Child* raw = child.get();
  children_.emplace(std::move(key), std::move(child));
  return raw;
}

}  // namespace tandem

#endif  // TANDEM_COMMON_METRICS_H_
