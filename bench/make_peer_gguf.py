#!/usr/bin/env python3
"""Writes a random-weight Llama GGUF file for CPU speed comparisons.

Both Tandem and llama.cpp load the same file (bench/cpu_peer.sh), so the
weights only need the right shapes and types and harmless values: F16/BF16
weights of magnitude 2^-9..2^-3 (no subnormals, no NaN), Q8_0 and Q4_0
blocks with a fixed scale and random int8 / 4-bit values (the same spread:
about 0.14 standard deviation); Q4_K super-blocks with fixed d = 2^-11 and
dmin = 2^-10 and random 6-bit scales and mins and 4-bit values (|w| < 0.5). The vocabulary is SentencePiece-style
("llama"): <unk>, <s>, </s>, the 256 byte tokens, then filler pieces.
Pure Python (no numpy) so it runs wherever the benchmark does.

  bench/make_peer_gguf.py --shape 110m --type q8_0 --out /tmp/110m-q8_0.gguf
"""
import argparse
import os
import struct

SHAPES = {
    # stories110M / Llama-2-style 110M: 768 x 12 layers.
    "110m": dict(n_embd=768, n_layer=12, n_head=12, n_head_kv=12, n_ff=2048, n_vocab=32000, ctx=2048,
                 rope_base=10000.0),
    # Llama 3.2 1B's dimensions.
    "llama-1b": dict(n_embd=2048, n_layer=16, n_head=32, n_head_kv=8, n_ff=8192, n_vocab=128256, ctx=4096,
                     rope_base=500000.0),
}

GGML_F32, GGML_F16, GGML_Q4_0, GGML_Q8_0, GGML_Q4_K, GGML_BF16 = 0, 1, 2, 8, 12, 30
# general.file_type (llama_ftype) for each weight type.
FTYPE = {"f16": (GGML_F16, 1), "bf16": (GGML_BF16, 32), "q8_0": (GGML_Q8_0, 7), "q4_0": (GGML_Q4_0, 2),
         # Every tensor Q4_K (llama-quantize's Q4_K_M keeps some at Q6_K).
         "q4_k": (GGML_Q4_K, 15)}
# Bytes per 32-element block and the fixed F16 scale of each block type.
BLOCKS = {GGML_Q8_0: (34, 1.0 / 512), GGML_Q4_0: (18, 1.0 / 32)}
ALIGN = 32


def s(x):
    b = x.encode()
    return struct.pack("<Q", len(b)) + b


def kv(key, vtype, value):
    out = s(key) + struct.pack("<I", vtype)
    if vtype == 8:
        return out + s(value)
    fmt = {4: "<I", 5: "<i", 6: "<f", 7: "<?"}[vtype]
    return out + struct.pack(fmt, value)


def kv_array(key, etype, values):
    out = s(key) + struct.pack("<IIQ", 9, etype, len(values))
    if etype == 8:
        return out + b"".join(s(v) for v in values)
    fmt = {5: "i", 6: "f"}[etype]
    return out + struct.pack("<%d%s" % (len(values), fmt), *values)


# High byte of an F16: keep the sign and the top two mantissa bits random,
# force the exponent into 6..12 (2^-9 .. 2^-3).
F16_HIGH = bytes((b & 0x83) | ((6 + (b >> 2) % 7) << 2) for b in range(256))
# High byte of a BF16: sign random, exponent 118..124 (2^-9 .. 2^-3):
# bits 14..7 of the 16-bit value; the high byte holds sign + exponent's top 7.
BF16_HIGH = bytes((b & 0x80) | (59 + (b & 0x7f) % 3) for b in range(256))


def random_tensor(ggml_type, n):
    if ggml_type == GGML_F32:
        return struct.pack("<f", 1.0) * n
    if ggml_type in (GGML_F16, GGML_BF16):
        raw = bytearray(os.urandom(2 * n))
        raw[1::2] = raw[1::2].translate(F16_HIGH if ggml_type == GGML_F16 else BF16_HIGH)
        return raw
    if ggml_type == GGML_Q4_K:
        assert n % 256 == 0
        blocks = n // 256
        raw = bytearray(os.urandom(144 * blocks))
        scales = struct.pack("<ee", 1.0 / 2048, 1.0 / 1024)
        for i in range(4):
            raw[i::144] = scales[i:i + 1] * blocks
        return raw
    size, d = BLOCKS[ggml_type]
    assert n % 32 == 0
    blocks = n // 32
    raw = bytearray(os.urandom(size * blocks))
    scale = struct.pack("<e", d)
    raw[0::size] = scale[0:1] * blocks
    raw[1::size] = scale[1:2] * blocks
    return raw


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", choices=sorted(SHAPES), required=True)
    ap.add_argument("--type", choices=sorted(FTYPE), required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    sh = SHAPES[a.shape]
    wtype, ftype = FTYPE[a.type]
    e, ff, v = sh["n_embd"], sh["n_ff"], sh["n_vocab"]
    kv_dim = e // sh["n_head"] * sh["n_head_kv"]
    # (name, ggml ne = [cols, rows], type)
    tensors = [("token_embd.weight", [e, v], wtype), ("output_norm.weight", [e], GGML_F32),
               ("output.weight", [e, v], wtype)]
    for i in range(sh["n_layer"]):
        p = "blk.%d." % i
        tensors += [(p + "attn_norm.weight", [e], GGML_F32), (p + "attn_q.weight", [e, e], wtype),
                    (p + "attn_k.weight", [e, kv_dim], wtype), (p + "attn_v.weight", [e, kv_dim], wtype),
                    (p + "attn_output.weight", [e, e], wtype), (p + "ffn_norm.weight", [e], GGML_F32),
                    (p + "ffn_gate.weight", [e, ff], wtype), (p + "ffn_up.weight", [e, ff], wtype),
                    (p + "ffn_down.weight", [ff, e], wtype)]
    tokens = ["<unk>", "<s>", "</s>"] + ["<0x%02X>" % b for b in range(256)]
    tokens += ["\u2581t%d" % i for i in range(v - len(tokens))]
    types = [2, 3, 3] + [6] * 256 + [1] * (v - 259)
    scores = [0.0] * 259 + [-float(i) for i in range(v - 259)]
    meta = [
        kv("general.architecture", 8, "llama"),
        kv("general.name", 8, "peer-%s-%s" % (a.shape, a.type)),
        kv("general.file_type", 4, ftype),
        kv("general.alignment", 4, ALIGN),
        kv("llama.context_length", 4, sh["ctx"]),
        kv("llama.embedding_length", 4, e),
        kv("llama.block_count", 4, sh["n_layer"]),
        kv("llama.feed_forward_length", 4, ff),
        kv("llama.attention.head_count", 4, sh["n_head"]),
        kv("llama.attention.head_count_kv", 4, sh["n_head_kv"]),
        kv("llama.rope.dimension_count", 4, e // sh["n_head"]),
        kv("llama.rope.freq_base", 6, sh["rope_base"]),
        kv("llama.attention.layer_norm_rms_epsilon", 6, 1e-5),
        kv("tokenizer.ggml.model", 8, "llama"),
        kv_array("tokenizer.ggml.tokens", 8, tokens),
        kv_array("tokenizer.ggml.scores", 6, scores),
        kv_array("tokenizer.ggml.token_type", 5, types),
        kv("tokenizer.ggml.unknown_token_id", 4, 0),
        kv("tokenizer.ggml.bos_token_id", 4, 1),
        kv("tokenizer.ggml.eos_token_id", 4, 2),
    ]

    def nbytes(ne, t):
        n = 1
        for d in ne:
            n *= d
        return {GGML_F32: 4 * n, GGML_F16: 2 * n, GGML_BF16: 2 * n, GGML_Q8_0: n // 32 * 34, GGML_Q4_0: n // 32 * 18,
                GGML_Q4_K: n // 256 * 144}[t]

    infos, offset = [], 0
    for name, ne, t in tensors:
        infos.append(s(name) + struct.pack("<I", len(ne)) + struct.pack("<%dQ" % len(ne), *ne) +
                     struct.pack("<IQ", t, offset))
        offset += (nbytes(ne, t) + ALIGN - 1) // ALIGN * ALIGN
    with open(a.out, "wb") as f:
        f.write(b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(meta)))
        for m in meta:
            f.write(m)
        for i in infos:
            f.write(i)
        f.write(b"\0" * (-f.tell() % ALIGN))
        for name, ne, t in tensors:
            n = 1
            for d in ne:
                n *= d
            data = random_tensor(t, n)
            f.write(data)
            f.write(b"\0" * (-len(data) % ALIGN))
    print("%s: %.1f MB" % (a.out, os.path.getsize(a.out) / 1e6))


if __name__ == "__main__":
    main()
