"""`corral predictor`: build a (prompt, output length) data set, train a length predictor and
evaluate it.

    corral predictor dataset --source model --out gsm8k-lengths.jsonl
    corral predictor train --data gsm8k-lengths.jsonl --kind ranking --out ranking.npz
    corral predictor evaluate --predictor ranking.npz --data gsm8k-lengths.jsonl --held-out

--data also accepts gsm8k:model or gsm8k:reference to read ../shared/data/gsm8k directly.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from corral.predict.base import LENGTH_PREDICTORS, LengthPredictor, load_predictor
from corral.predict.bucket import quantile_edges
from corral.predict.dataset import (
    GSM8K_SOURCES,
    LengthSample,
    gsm8k_samples,
    lengths_of,
    read_jsonl,
    split,
    write_jsonl,
)
from corral.predict.features import FEATURE_SETS, FeatureConfig
from corral.predict.metrics import Evaluation, evaluate
from corral.predict.ranking import OBJECTIVES
from corral.predict.units import make_unit

NUM_REPORT_BUCKETS = 4


def add_arguments(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="predictor_command", required=True)

    dataset = commands.add_parser("dataset", help="write GSM8K (prompt, output length) pairs")
    dataset.add_argument("--source", choices=GSM8K_SOURCES, default="model")
    dataset.add_argument("--out", required=True, help="output JSONL")
    _common(dataset)

    train = commands.add_parser("train", help="fit a predictor and report held-out metrics")
    train.add_argument("--data", required=True, help="JSONL of prompt/output_len, or gsm8k:SOURCE")
    train.add_argument("--kind", choices=LENGTH_PREDICTORS.names(), default="ranking")
    train.add_argument("--objective", choices=OBJECTIVES, default="pairwise", help="ranking only")
    train.add_argument("--features", choices=FEATURE_SETS, default="full")
    train.add_argument("--num-hash-buckets", type=int, default=2048)
    train.add_argument("--num-buckets", type=int, default=6, help="bucket kind: length buckets")
    train.add_argument("--num-steps", type=int, default=300, help="bucket/ranking optimizer steps")
    train.add_argument(
        "--embedding-model", default=None, help="append the mean hidden state of this HF model"
    )
    train.add_argument("--out", required=True, help="where to save the predictor (.npz)")
    train.add_argument("--json", default=None, help="also write the metrics to this JSON file")
    _split_arguments(train)
    _common(train)

    check = commands.add_parser("evaluate", help="report MAE, bucket accuracy and Kendall tau")
    check.add_argument("--predictor", required=True, help="a file saved by `train`")
    check.add_argument("--data", required=True, help="JSONL of prompt/output_len, or gsm8k:SOURCE")
    check.add_argument(
        "--held-out", action="store_true", help="only the rows `train` held out (same seed)"
    )
    check.add_argument(
        "--data-dir", default=None, help="default: $CORRAL_DATA_DIR or ../shared/data"
    )
    _split_arguments(check)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--unit",
        default="words",
        help="length unit: words (regex words and punctuation) or a tokenizer.json / model dir",
    )
    parser.add_argument(
        "--data-dir", default=None, help="default: $CORRAL_DATA_DIR or ../shared/data"
    )


def _split_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--holdout", type=float, default=0.2, help="held-out fraction (by prompt)")
    parser.add_argument("--seed", type=int, default=0)


def load_samples(data: str, unit_name: str, data_dir: str | None) -> list[LengthSample]:
    """A JSONL file, or gsm8k:model / gsm8k:reference."""
    if data.startswith("gsm8k"):
        _, _, source = data.partition(":")
        return gsm8k_samples(make_unit(unit_name), source or "model", data_dir)
    return read_jsonl(data, make_unit(unit_name))


def build_predictor(args: argparse.Namespace) -> LengthPredictor:
    features = FeatureConfig(
        feature_set=args.features,
        num_hash_buckets=args.num_hash_buckets,
        embedding_model=args.embedding_model,
    )
    options: dict[str, Any] = {}
    if args.kind == "ranking":
        options = {"objective": args.objective, "num_steps": args.num_steps}
    elif args.kind == "bucket":
        options = {"num_buckets": args.num_buckets, "num_steps": args.num_steps}
    cls = LENGTH_PREDICTORS.get(args.kind)
    return cls(unit=args.unit, features=features, seed=args.seed, **options)  # type: ignore[call-arg]


def evaluate_on(
    predictor: LengthPredictor, samples: Sequence[LengthSample], edges: Sequence[float]
) -> Evaluation:
    prompts = [sample.prompt for sample in samples]
    return evaluate(
        lengths_of(samples), predictor.predict(prompts), predictor.scores(prompts), edges
    )


def _print_report(rows: list[tuple[str, Evaluation]], edges: Sequence[float]) -> None:
    print(f"held-out buckets (edges from training quartiles): {[round(e, 1) for e in edges]}")
    print(f"{'predictor':<34} {'samples':>8} {'MAE':>8} {'bucket acc':>10} {'Kendall tau':>11}")
    for name, result in rows:
        print(
            f"{name:<34} {result.num_samples:>8} {result.mae:>8.2f} "
            f"{result.bucket_accuracy:>10.3f} {result.kendall_tau:>11.3f}"
        )


def run_train(args: argparse.Namespace) -> int:
    samples = load_samples(args.data, args.unit, args.data_dir)
    train, held_out = split(samples, args.holdout, args.seed)
    edges = quantile_edges(lengths_of(train), NUM_REPORT_BUCKETS).tolist()
    prompts = [sample.prompt for sample in train]
    start = time.perf_counter()
    predictor = build_predictor(args).fit(prompts, lengths_of(train))
    fit_s = time.perf_counter() - start
    baseline = LENGTH_PREDICTORS.get("regression")(  # type: ignore[call-arg]
        unit=args.unit, features=FeatureConfig(feature_set="length"), seed=args.seed
    ).fit(prompts, lengths_of(train))
    result = evaluate_on(predictor, held_out, edges)
    base_result = evaluate_on(baseline, held_out, edges)
    name = args.kind + (f" ({args.objective})" if args.kind == "ranking" else "")
    _print_report([(name, result), ("baseline: prompt length only", base_result)], edges)
    predictor.info = {
        "data": args.data,
        "num_train": len(train),
        "num_held_out": len(held_out),
        "holdout": args.holdout,
        "report_edges": edges,
        "held_out": result.to_dict(),
        "baseline_held_out": base_result.to_dict(),
        "fit_s": round(fit_s, 2),
    }
    path = predictor.save(args.out)
    print(f"saved {path} ({path.stat().st_size} bytes, fitted in {fit_s:.1f} s)")
    if args.json:
        with open(args.json, "w") as file:
            json.dump(predictor.info, file, indent=2)
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    predictor = load_predictor(args.predictor)
    samples = load_samples(args.data, predictor.unit_name, args.data_dir)
    if args.held_out:
        train, samples = split(samples, args.holdout, args.seed)
        edges = quantile_edges(lengths_of(train), NUM_REPORT_BUCKETS).tolist()
    else:
        edges = (
            predictor.info.get("report_edges")
            or quantile_edges(lengths_of(samples), NUM_REPORT_BUCKETS).tolist()
        )
    _print_report([(predictor.kind, evaluate_on(predictor, samples, edges))], edges)
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        if args.predictor_command == "dataset":
            samples = gsm8k_samples(make_unit(args.unit), args.source, args.data_dir)
            count = write_jsonl(samples, args.out)
            lengths = lengths_of(samples)
            print(
                f"wrote {count} rows to {args.out} (output length in {args.unit}: mean "
                f"{lengths.mean():.1f}, median {np.median(lengths):.0f}, max {lengths.max():.0f})"
            )
            return 0
        if args.predictor_command == "train":
            return run_train(args)
        return run_evaluate(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"corral predictor: error: {error}", file=sys.stderr)
        return 2
