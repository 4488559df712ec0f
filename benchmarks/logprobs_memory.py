"""Peak memory and time of per-token log-probs, naive vs chunked, forward + backward.

Variants (all end in `logp.sum().backward()` so the backward pass is measured too):
  naive_logits    logits leaf (B*T, V) in --dtype -> naive fp32 log_softmax + gather
  chunked_logits  same leaf -> eureka_kit.algos.ops.token_logprobs_from_logits
  naive_hidden    hidden (N, H) and weight (V, H) leaves -> logits matmul -> naive
  fused_hidden    same leaves -> eureka_kit.algos.ops.token_logprobs_from_hidden (logits never formed)
Peak memory is measured above the inputs already allocated: on CUDA with
torch.cuda.max_memory_allocated (all variants in one process); on CPU each variant runs in a fresh
subprocess and reports ru_maxrss after minus before, since RSS high-water marks cannot be reset.

  python benchmarks/logprobs_memory.py                  # CPU: 4096 tokens, V=151,936, H=256, chunk 256
  python benchmarks/logprobs_memory.py --json out.json  # GPU: 65536 tokens, H=896, chunk 1024
The last line is `logprob_peak_memory_ratio=<naive_logits / chunked_logits>`.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from eureka_kit.algos.ops import naive_token_logprobs, token_logprobs_from_hidden, token_logprobs_from_logits  # noqa: E402

VARIANTS = ("naive_logits", "chunked_logits", "naive_hidden", "fused_hidden")


def _randn(shape, scale, device, dtype, g):
    """randn in `dtype`, filled 256 rows at a time so the fp32 temporaries stay tiny."""
    out = torch.empty(shape, device=device, dtype=dtype)
    for s in range(0, shape[0], 256):
        rows = out[s:s + 256]
        rows.copy_(torch.randn(rows.shape, device=device, generator=g) * scale)
    return out


def make_inputs(variant, args, device, dtype):
    """The leaves a variant starts from; setup stays far below any variant's own peak."""
    g = torch.Generator(device=device).manual_seed(0)
    ids = torch.randint(0, args.vocab, (1, args.tokens), device=device, generator=g)
    if variant.endswith("_logits"):
        logits = _randn((args.tokens, args.vocab), 3.0, device, dtype, g)
        return {"logits": logits.unsqueeze(0).requires_grad_(), "ids": ids}
    hidden = _randn((args.tokens, args.hidden), 1.0, device, dtype, g).unsqueeze(0)
    weight = _randn((args.vocab, args.hidden), args.hidden**-0.5, device, dtype, g)
    return {"hidden": hidden.requires_grad_(), "weight": weight.requires_grad_(), "ids": ids}


def step(variant, inp, args):
    """One forward + backward; grads are dropped afterwards so repeats start from the same state."""
    t = args.temperature
    if variant == "naive_logits":
        logp = naive_token_logprobs(inp["logits"], inp["ids"], temperature=t)
    elif variant == "chunked_logits":
        logp = token_logprobs_from_logits(inp["logits"], inp["ids"], chunk_size=args.chunk_size, temperature=t)
    elif variant == "naive_hidden":
        logp = naive_token_logprobs(inp["hidden"] @ inp["weight"].t(), inp["ids"], temperature=t)
    else:
        logp = token_logprobs_from_hidden(inp["hidden"], inp["weight"], inp["ids"],
                                          chunk_size=args.chunk_size, temperature=t)
    logp.sum().backward()
    for leaf in inp.values():
        leaf.grad = None


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(variant, args, device, dtype):
    """Returns {'peak_mb', 'time_s'} for one variant in this process."""
    inp = make_inputs(variant, args, device, dtype)
    sync(device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    times = []
    try:
        for _ in range(args.repeats):  # the first run sets the memory peak; time all of them
            t0 = time.perf_counter()
            step(variant, inp, args)
            sync(device)
            times.append(time.perf_counter() - t0)
    except torch.cuda.OutOfMemoryError:
        return {"peak_mb": None, "time_s": None, "error": "OOM"}
    if device.type == "cuda":
        peak_mb = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    # median, with the first (page-faulting / warm-up) run excluded when there are others
    return {"peak_mb": peak_mb, "time_s": statistics.median(times[1:] or times)}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=None, help="B*T rows (default 4096 CPU, 65536 GPU)")
    p.add_argument("--vocab", type=int, default=151_936, help="V (Qwen2 vocab by default)")
    p.add_argument("--hidden", type=int, default=None, help="H for the *_hidden variants (256 CPU, 896 GPU)")
    p.add_argument("--chunk-size", type=int, default=None,
                   help="rows per chunk (default 256 CPU, 1024 GPU: 16 and 64 chunks, so the chunk is small vs N)")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--repeats", type=int, default=3, help="timed forward+backward runs per variant")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", default=None, help="write results (args, device, rows, ratios) here")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)  # internal: one CPU variant
    args = p.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    on_gpu = device.type == "cuda"
    args.tokens = args.tokens or (65_536 if on_gpu else 4096)
    args.chunk_size = args.chunk_size or (1024 if on_gpu else 256)
    args.hidden = args.hidden or (896 if on_gpu else 256)

    if args.child:  # subprocess mode: print one JSON line and exit
        print(json.dumps(measure(args.child, args, device, dtype)))
        return

    rows = {}
    for variant in args.variants.split(","):
        if on_gpu:
            rows[variant] = measure(variant, args, device, dtype)
        else:  # a fresh process per variant, so each RSS high-water mark is its own
            cmd = [sys.executable, os.path.abspath(__file__), "--child", variant] + [
                a for a in sys.argv[1:] if a]
            if "--json" in cmd:
                i = cmd.index("--json")
                del cmd[i:i + 2]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                rows[variant] = {"peak_mb": None, "time_s": None, "error": done.stderr.strip()[-300:]}
            else:
                rows[variant] = json.loads(done.stdout.strip().splitlines()[-1])

    name = torch.cuda.get_device_name() if on_gpu else f"CPU x{torch.get_num_threads()} threads"
    print(f"device={name} torch={torch.__version__} tokens={args.tokens} V={args.vocab} H={args.hidden} "
          f"dtype={args.dtype} chunk={args.chunk_size} T={args.temperature} repeats={args.repeats}")
    print(f"{'variant':<16}{'peak MB':>12}{'time s':>10}")
    for variant, r in rows.items():
        if r.get("error"):
            print(f"{variant:<16}{'failed':>12}{'':>10}  {r['error'][:120]}")
        else:
            print(f"{variant:<16}{r['peak_mb']:>12.1f}{r['time_s']:>10.3f}")

    def ratio(a, b, key):
        ra, rb = rows.get(a, {}), rows.get(b, {})
        return ra[key] / rb[key] if ra.get(key) and rb.get(key) else float("nan")

    ratios = {
        "logprob_peak_memory_ratio_fused": ratio("naive_hidden", "fused_hidden", "peak_mb"),
        "logprob_time_ratio_fused": ratio("fused_hidden", "naive_hidden", "time_s"),
        "logprob_time_ratio": ratio("chunked_logits", "naive_logits", "time_s"),
        "logprob_peak_memory_ratio": ratio("naive_logits", "chunked_logits", "peak_mb"),
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "device": name, "torch": torch.__version__, "rows": rows,
                       "ratios": ratios}, f, indent=2)
    for key, value in ratios.items():  # the headline memory ratio is printed last, on purpose
        print(f"{key}={value:.3f}")


if __name__ == "__main__":
    main()
