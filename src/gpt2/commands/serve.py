"""`gpt2 serve`: an OpenAI-compatible completions server with continuous batching, and a playground page at /."""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from pathlib import Path

from gpt2.commands import add_device_options, load_model
from gpt2.errors import GPT2Error


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gpt2 serve",
        description="Serve a model over HTTP: POST /v1/completions as OpenAI defines it (streaming, n, stop, seed, "
        "logprobs, echo, plus top_k), GET /v1/models, GET /health, GET /metrics (Prometheus), /docs, and a "
        "playground page at /. Concurrent requests share each forward pass (continuous batching); prompts that "
        "begin alike share their prefill (prefix caching).",
    )
    p.add_argument(
        "--model", required=True, help="a model folder (config.json + model.safetensors + tokenizer), or gpt2, ..."
    )
    p.add_argument("--host", default="127.0.0.1", help="the address to listen on; loopback only by default")
    p.add_argument("--port", type=int, default=8000, help="the TCP port to listen on (8000)")
    p.add_argument(
        "--api-key",
        default=os.environ.get("GPT2_API_KEY"),
        help="require `Authorization: Bearer KEY` on /v1 (default: $GPT2_API_KEY, else no key)",
    )
    p.add_argument("--served-model-name", help="the model's id in the API (default: the model folder's name)")
    p.add_argument("--max-batch", type=int, default=32, help="rows decoded together at most; more requests wait (32)")
    p.add_argument(
        "--prefix-cache",
        type=float,
        default=1024,
        metavar="MB",
        help="memory for the keys and values of prompt prefixes, reused by prompts that begin alike (1024; 0: off)",
    )
    p.add_argument(
        "--prefill-chunk",
        type=int,
        default=256,
        help="prompt tokens prefilled between two decode steps, so that a long prompt does not pause the streams "
        "in flight (256)",
    )
    p.add_argument(
        "--shutdown-grace",
        type=float,
        default=30,
        metavar="SECONDS",
        help="on SIGTERM or Ctrl+C, new requests get a 503 while those in flight finish for up to this long; the "
        "rest then end with an error (30)",
    )
    add_device_options(p, "auto", "auto: bfloat16 on a GPU that has it, else float32")
    return p


def run(argv: list[str]) -> None:
    args = parser().parse_args(argv)
    if not 0 <= args.port <= 65535:
        raise GPT2Error(f"--port must be in 0..65535, got {args.port}")
    if args.max_batch < 1:
        raise GPT2Error(f"--max-batch must be >= 1, got {args.max_batch}")
    if args.prefill_chunk < 1:
        raise GPT2Error(f"--prefill-chunk must be >= 1, got {args.prefill_chunk}")
    if args.prefix_cache < 0 or args.shutdown_grace < 0:
        raise GPT2Error("--prefix-cache and --shutdown-grace must be >= 0")
    try:
        import uvicorn

        from gpt2.serve.app import create_app
        from gpt2.serve.server import Server
    except ImportError as e:
        raise GPT2Error(f"gpt2 serve needs the serve extra ({e.name} is missing): pip install 'gpt2[serve]'") from None
    try:
        loopback = ipaddress.ip_address(args.host).is_loopback
    except ValueError:
        loopback = args.host == "localhost"
    if not loopback and not args.api_key:
        print(
            f"warning: listening on {args.host} without --api-key: anyone who can reach it may use it", file=sys.stderr
        )
    model, tokenizer, _ = load_model(args.model, None, args.device, args.dtype)
    name = args.served_model_name or Path(args.model.rstrip("/")).name
    app = create_app(model, tokenizer, name, aliases=[args.model], api_key=args.api_key, max_batch=args.max_batch,
                     prefill_chunk=args.prefill_chunk, prefix_cache_mb=args.prefix_cache)  # fmt: skip
    print(f"serving {name} at http://{args.host}:{args.port}/ (playground), /v1 (OpenAI API)", file=sys.stderr)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=5)
    Server(config, app, args.shutdown_grace).run()
