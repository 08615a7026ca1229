"""`segloc bench retrieval`: faiss query time for 1k, 10k and 100k database images (JSON last line)."""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass

import numpy as np

from segloc_core.errors import CheckFailed, require
from segloc_core.localize.retrieval import DescriptorIndex, RetrievalConfig


def synthetic_descriptors(n: int, dim: int, n_queries: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Database descriptors along a trajectory (a random walk on the sphere, so neighbours are
    similar as in a real mapping run) and queries that are noisy copies of random database entries."""
    rng = np.random.default_rng(seed)
    db = np.cumsum(rng.standard_normal((n, dim)).astype(np.float32) * 0.2, axis=0)
    db += rng.standard_normal((1, dim)).astype(np.float32) * 5
    db /= np.linalg.norm(db, axis=1, keepdims=True)
    q = db[rng.integers(0, n, n_queries)] + rng.standard_normal((n_queries, dim)).astype(np.float32) * 0.02
    return db, q / np.linalg.norm(q, axis=1, keepdims=True)


@dataclass(frozen=True)
class RetrievalBenchRow:
    images: int
    index: str
    query_ms: float  # mean over single queries (the localization use: one frame at a time)
    build_s: float


def _time_queries(index: DescriptorIndex, queries: np.ndarray, k: int) -> tuple[float, np.ndarray]:
    index.search(queries[:1], k)  # warm-up
    ids = np.empty((len(queries), k), np.int64)
    t0 = time.perf_counter()
    for j, q in enumerate(queries):
        ids[j] = index.search(q[None], k)[1][0]
    return (time.perf_counter() - t0) * 1e3 / len(queries), ids


def run_bench(sizes: tuple[int, ...] = (1_000, 10_000, 100_000), dim: int = 256, n_queries: int = 200,
              config: RetrievalConfig = RetrievalConfig(), threads: int = 1,
              floor_ms: float = 5.0) -> dict:
    """Query time per database size with the index `config` picks, the exact baseline at the
    largest size, and the approximate index's recall@1 against exact search."""
    from segloc_core.progress import progress_bar

    faiss = require("faiss")
    faiss.omp_set_num_threads(threads)
    rows = []
    for n in progress_bar(sizes, desc="retrieval bench", unit="size"):
        db, q = synthetic_descriptors(n, dim, n_queries, seed=n)
        t0 = time.perf_counter()
        index = DescriptorIndex(db, config)
        build_s = time.perf_counter() - t0
        ms, ids = _time_queries(index, q, config.top_k)
        rows.append(RetrievalBenchRow(n, index.kind, ms, build_s))
        print(f"{n:>7d} images  {index.kind:14s} {ms:7.3f} ms/query  (built in {build_s:.1f} s)")
    exact = DescriptorIndex(db, RetrievalConfig(exact_max_images=len(db)))
    exact_ms, exact_ids = _time_queries(exact, q, config.top_k)
    recall1 = float(np.mean(ids[:, 0] == exact_ids[:, 0]))
    print(f"{n:>7d} images  {exact.kind:14s} {exact_ms:7.3f} ms/query  (exact baseline)")
    result = {
        "dim": dim, "queries": n_queries, "threads": threads, "top_k": config.top_k,
        "query_ms": {str(r.images): round(r.query_ms, 4) for r in rows},
        "index": {str(r.images): r.index for r in rows},
        "build_s": {str(r.images): round(r.build_s, 2) for r in rows},
        "exact_query_ms_at_largest": round(exact_ms, 4),
        "speedup_vs_exact_at_largest": round(exact_ms / rows[-1].query_ms, 2),
        "recall_at_1_vs_exact_at_largest": round(recall1, 4),
        "floor_ms": floor_ms, "floor_met": rows[-1].query_ms <= floor_ms,
    }
    return result


def _cli_bench(args: argparse.Namespace) -> int:
    config = RetrievalConfig(exact_max_images=args.exact_max_images, hnsw_ef_search=args.ef_search)
    result = run_bench(tuple(args.sizes), args.dim, args.queries, config, args.threads)
    print(json.dumps(result))
    if not result["floor_met"]:
        raise CheckFailed(f"{args.sizes[-1]} database images took {result['query_ms'][str(args.sizes[-1])]} ms "
                          f"per query, above the {result['floor_ms']} ms floor")
    return 0


def configure_bench(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    parser.add_argument("--dim", type=int, default=256, help="descriptor dimensions (whitened)")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--exact-max-images", type=int, default=RetrievalConfig.exact_max_images)
    parser.add_argument("--ef-search", type=int, default=RetrievalConfig.hnsw_ef_search)
    parser.set_defaults(func=_cli_bench)
