#!/usr/bin/env python3
"""Upper bounds on the prefix hit rate of a Mooncake trace for a cluster.

    bench/trace_bound.py --trace ../shared/data/traces/mooncake_conversation.jsonl \
        --max-requests 1500 --block-tokens 16 --capacity-blocks 4000 [--json out.json]

Replays the trace's block ids the way `tandem bench` synthesizes prompts
(loadgen/workload.h: n = ceil(L / 512) blocks; every full block becomes
--block-tokens tokens; the last keeps its fraction, rounded up) and counts
cached prompt tokens the way the engine does: the leading run of full blocks
already cached, at most prompt - 1 tokens (the last token is always
computed). Prints two hit rates (cached tokens / prompt tokens):

  infinite   every block ever seen is cached: the bound for any cache.
  pooled_lru one LRU cache holding --capacity-blocks blocks, i.e. the whole
             cluster's prefill KV capacity pooled, with every request sent
             to it: what perfect KV-aware routing could reach with the
             engines' own (LRU) eviction. This is the "ideal for the
             cluster's capacity" the router is measured against.

Both assume each request's blocks are cached as soon as it is admitted
(requests in flight at once can in reality miss each other's blocks).
"""
import argparse
import collections
import json
import math


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trace", required=True)
    p.add_argument("--max-requests", type=int, default=0)
    p.add_argument("--block-tokens", type=int, default=16)
    p.add_argument("--source-block-tokens", type=int, default=512)
    p.add_argument("--capacity-blocks", type=int, required=True,
                   help="KV blocks of all prefill workers together")
    p.add_argument("--max-input-tokens", type=int, default=0)
    p.add_argument("--json")
    a = p.parse_args()

    reqs = []
    with open(a.trace) as f:
        for line in f:
            if line.strip():
                reqs.append(json.loads(line))
            if a.max_requests and len(reqs) >= a.max_requests:
                break

    S, B = a.source_block_tokens, a.block_tokens
    inf_seen = set()
    lru = collections.OrderedDict()
    prompt_tokens = inf_cached = lru_cached = 0
    for r in reqs:
        ids = r["hash_ids"]
        n = len(ids)
        rem = r["input_length"] - (n - 1) * S
        length = (n - 1) * B + max(1, math.ceil(rem * B / S))
        if a.max_input_tokens:
            length = min(length, a.max_input_tokens)
        full = length // B
        blocks = ids[:full]
        prompt_tokens += length

        def leading(pred):
            k = 0
            for h in blocks:
                if not pred(h):
                    break
                k += 1
            return min(k * B, length - 1)

        inf_cached += leading(lambda h: h in inf_seen)
        lru_cached += leading(lambda h: h in lru)
        for h in blocks:
            inf_seen.add(h)
            if h in lru:
                lru.move_to_end(h)
            else:
                lru[h] = True
                if len(lru) > a.capacity_blocks:
                    lru.popitem(last=False)

    out = {
        "requests": len(reqs),
        "prompt_tokens": prompt_tokens,
        "capacity_blocks": a.capacity_blocks,
        "block_tokens": B,
        "infinite_hit_rate": inf_cached / prompt_tokens,
        "pooled_lru_hit_rate": lru_cached / prompt_tokens,
    }
    print(json.dumps(out, indent=2))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
