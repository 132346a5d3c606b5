"""Grammar-side measurements of benchmarks/structured_output.py, without the model: compile
times (xgrammar through corral's XGrammarBackend, cold and cached; llguidance's matcher build
when it is importable) and the mask cost per token, bare and on the engine's per-step path."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks.structured_output_schemas import (
    REGEX_UNBOUNDED,
    REGEX_UNBOUNDED_LABEL,
    WORKLOADS,
    compile_constraints,
)
from corral.engine.tokenizer import Tokenizer
from corral.model.arch import ModelArch
from corral.structured.bitmask import new_bitmask
from corral.structured.constraint import new_constraint
from corral.structured.masking import TokenMask, sample_mask
from corral.structured.params import StructuredOutputParams
from corral.structured.xgrammar_backend import XGrammarBackend

# llguidance options that give the language of corral's xgrammar "compact" JSON.
_LLG_JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def _ms(seconds: float) -> float:
    return round(seconds * 1e3, 3)


def measure_compile(model_dir: Path, repeats: int) -> dict[str, Any]:
    """Medians over `repeats` fresh backends: the backend's construction (xgrammar's tokenizer
    info), and per constraint its conversion to a Grammar (no tokenizer), its cold compile, and
    a second compile (corral's cache)."""
    arch = ModelArch.from_dir(model_dir)
    hf = Tokenizer(model_dir).hf
    constraints = compile_constraints()
    build_s: list[float] = []
    seconds: dict[str, dict[str, list[float]]] = {
        name: {"convert": [], "cold": [], "cached": []} for name in constraints
    }
    for _ in range(repeats):
        start = time.perf_counter()
        backend = XGrammarBackend(hf, arch.vocab_size, sorted(arch.eos_token_ids))
        build_s.append(time.perf_counter() - start)
        for name, params in constraints.items():
            for stage, call in (
                ("convert", XGrammarBackend.check),  # to xgrammar's Grammar, no tokenizer
                ("cold", backend.compile),
                ("cached", backend.compile),
            ):
                start = time.perf_counter()
                call(params)
                seconds[name][stage].append(time.perf_counter() - start)
    llg = _llguidance_compile(hf, arch, constraints, repeats)
    rows = []
    for name in constraints:
        row = dict(constraint=name)
        row |= {f"{stage}_ms": _ms(statistics.median(s)) for stage, s in seconds[name].items()}
        row["cold_ms_range"] = [_ms(min(seconds[name]["cold"])), _ms(max(seconds[name]["cold"]))]
        if llg is not None:
            row["llguidance_matcher_ms"] = llg["matcher_ms"][name]
        rows.append(row)
    return dict(
        tokenizer_info_ms=_ms(statistics.median(build_s)),
        tokenizer_info_ms_range=[_ms(min(build_s)), _ms(max(build_s))],
        llguidance_tokenizer_ms=None if llg is None else llg["tokenizer_ms"],
        rows=rows,
    )


def _llguidance_grammar(params: StructuredOutputParams) -> str:
    import llguidance

    if params.kind == "regex":
        return llguidance.LLMatcher.grammar_from_regex(params.regex or "")
    schema: Any = {"type": "object"} if params.kind == "json_object" else params.json
    return llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=_LLG_JSON_OPTIONS)


def _llguidance_tokenizer(hf: Any, arch: ModelArch) -> Any:
    import llguidance.hf

    return llguidance.hf.from_tokenizer(
        hf, n_vocab=arch.vocab_size, eos_token=sorted(arch.eos_token_ids)
    )


def _llguidance_compile(hf: Any, arch: ModelArch, constraints: dict, repeats: int) -> dict | None:
    """llguidance builds its tokenizer once and compiles lazily: a matcher's construction is
    its compile (the first masks may still pay for lexer states)."""
    try:
        import llguidance
    except ImportError:
        return None
    start = time.perf_counter()
    tokenizer = _llguidance_tokenizer(hf, arch)
    tokenizer_s = time.perf_counter() - start
    matcher_ms = {}
    for name, params in constraints.items():
        samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            matcher = llguidance.LLMatcher(tokenizer, _llguidance_grammar(params))
            samples.append(time.perf_counter() - start)
            if matcher.is_error():
                raise SystemExit(f"llguidance cannot compile {name}: {matcher.get_error()}")
        matcher_ms[name] = _ms(statistics.median(samples))
    return dict(tokenizer_ms=_ms(tokenizer_s), matcher_ms=matcher_ms)


# ---- 3. mask cost per token -----------------------------------------------------------------


def replay(
    make: Callable[[], Any],
    fill: Callable[[Any, torch.Tensor], Any],
    accept: Callable[[Any, int], bool],
    sequences: list[list[int]],
    vocab_size: int,
) -> tuple[float, float, int]:
    """Seconds filling, seconds accepting, tokens refused, over every token of the sequences."""
    bitmask = torch.full((1, (vocab_size + 31) // 32), -1, dtype=torch.int32)
    fill_s = accept_s = 0.0
    num_refused = 0
    clock = time.perf_counter
    for sequence in sequences:
        matcher = make()
        for token_id in sequence:
            start = clock()
            fill(matcher, bitmask)
            middle = clock()
            accepted = accept(matcher, token_id)
            accept_s += clock() - middle
            fill_s += middle - start
            if not accepted:
                num_refused += 1
                break
    return fill_s, accept_s, num_refused


def _matchers(hf: Any, arch: ModelArch, params: StructuredOutputParams) -> dict[str, tuple]:
    """Per library: (new matcher, fill row 0 of a bitmask, accept a token)."""
    import xgrammar as xgr

    stop_ids = sorted(arch.eos_token_ids)
    backend = XGrammarBackend(hf, arch.vocab_size, stop_ids)
    compiled = backend.compile(params)
    libraries: dict[str, tuple] = {
        "xgrammar": (
            # The bare library matcher, made as XGrammarBackend.matcher makes it.
            lambda: xgr.GrammarMatcher(compiled, override_stop_tokens=stop_ids),
            lambda m, bitmask: m.fill_next_token_bitmask(bitmask, 0),
            lambda m, token_id: m.accept_token(token_id),
        ),
        "xgrammar through corral's OutputConstraint": (
            lambda: new_constraint(backend, compiled, None, stop_ids),
            lambda m, bitmask: m.fill(bitmask, 0),
            lambda m, token_id: m.accept(token_id),
        ),
    }
    try:
        import llguidance
        import llguidance.torch
    except ImportError:
        return libraries
    tokenizer = _llguidance_tokenizer(hf, arch)
    grammar = _llguidance_grammar(params)
    libraries["llguidance"] = (
        lambda: llguidance.LLMatcher(tokenizer, grammar),
        lambda m, bitmask: llguidance.torch.fill_next_token_bitmask(m, bitmask, 0),
        lambda m, token_id: m.consume_token(token_id),
    )
    return libraries


def mask_agreement(
    libraries: dict[str, tuple], sequences: list[list[int]], vocab_size: int
) -> dict[str, float]:
    """Shares of steps where xgrammar and llguidance allow the same tokens, where only one of
    them allows more (a strict superset), and where each allows some the other does not."""
    names = ("xgrammar", "llguidance")
    counts = dict.fromkeys(("identical", "xgrammar_allows_more", "llguidance_allows_more"), 0)
    counts["each_allows_others"] = 0
    num_steps = 0
    for sequence in sequences:
        matchers = [libraries[name][0]() for name in names]
        for token_id in sequence:
            masks = [torch.zeros((1, (vocab_size + 31) // 32), dtype=torch.int32) for _ in names]
            for name, matcher, mask in zip(names, matchers, masks):
                libraries[name][1](matcher, mask)
            x_more = bool((masks[0] & ~masks[1]).any())
            l_more = bool((masks[1] & ~masks[0]).any())
            key = {
                (False, False): "identical",
                (True, False): "xgrammar_allows_more",
                (False, True): "llguidance_allows_more",
                (True, True): "each_allows_others",
            }[(x_more, l_more)]
            counts[key] += 1
            num_steps += 1
            for name, matcher in zip(names, matchers):
                libraries[name][2](matcher, token_id)
    return {key: round(count / max(num_steps, 1), 4) for key, count in counts.items()}


def measure_mask(
    model_dir: Path, sequences: dict[str, list[list[int]]], repeats: int
) -> list[dict[str, Any]]:
    arch = ModelArch.from_dir(model_dir)
    hf = Tokenizer(model_dir).hf
    rows = []
    replays = [(name, WORKLOADS[name], tokens) for name, tokens in sequences.items()]
    if "regex" in sequences:  # the same outputs match the regex without its length bound
        replays.append((REGEX_UNBOUNDED_LABEL, REGEX_UNBOUNDED, sequences["regex"]))
    for workload, params, token_lists in replays:
        libraries = _matchers(hf, arch, params)
        num_tokens = sum(len(tokens) for tokens in token_lists)
        agreement = None
        if "llguidance" in libraries:
            agreement = mask_agreement(libraries, token_lists, arch.vocab_size)
        for library, (make, fill, accept) in libraries.items():
            runs = [
                replay(make, fill, accept, token_lists, arch.vocab_size) for _ in range(repeats)
            ]
            fill_us = statistics.median(r[0] for r in runs) / num_tokens * 1e6
            accept_us = statistics.median(r[1] for r in runs) / num_tokens * 1e6
            rows.append(
                dict(
                    workload=workload,
                    library=library,
                    num_tokens=num_tokens,
                    fill_us_per_token=round(fill_us, 2),
                    accept_us_per_token=round(accept_us, 2),
                    total_us_per_token=round(fill_us + accept_us, 2),
                    num_refused=runs[0][2],
                    mask_vs_xgrammar=agreement if library == "llguidance" else None,
                )
            )
    return rows


def measure_step_path(
    model_dir: Path, workload: str, sequences: list[list[int]], repeats: int
) -> dict[str, Any]:
    """The engine's per-step mask work for a batch that walks `sequences` together (rows
    leave as their sequences end, as in the engine): microseconds per step and per token."""
    arch = ModelArch.from_dir(model_dir)
    stop_ids = sorted(arch.eos_token_ids)
    backend = XGrammarBackend(Tokenizer(model_dir).hf, arch.vocab_size, stop_ids)
    compiled = backend.compile(WORKLOADS[workload])
    parts = ("sample_mask", "take_empty_rows", "apply", "accept")
    samples: dict[str, list[float]] = {part: [] for part in parts}
    clock = time.perf_counter
    num_steps = num_tokens = 0
    for repeat in range(repeats + 1):  # the first pass warms up, uncounted
        constraints = [new_constraint(backend, compiled, None, stop_ids) for _ in sequences]
        logits = torch.randn(len(sequences), arch.vocab_size)
        spent = dict.fromkeys(parts, 0.0)
        num_steps = num_tokens = 0
        for position in range(max(len(tokens) for tokens in sequences)):
            live = [i for i, tokens in enumerate(sequences) if position < len(tokens)]
            t0 = clock()
            mask = sample_mask([constraints[i] for i in live], arch.vocab_size)
            t1 = clock()
            if mask is None or mask.take_empty_rows(arch.vocab_size):
                raise SystemExit(f"{workload}: a replayed output left its grammar")
            t2 = clock()
            mask.apply(logits[: len(live)])
            t3 = clock()
            for i in live:
                constraints[i].accept(sequences[i][position])
            t4 = clock()
            for part, seconds in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                spent[part] += seconds
            num_steps += 1
            num_tokens += len(live)
        for part in parts:
            if repeat:
                samples[part].append(spent[part])
    per_step = {part: statistics.median(s) / num_steps * 1e6 for part, s in samples.items()}
    total = sum(per_step.values())
    return dict(
        workload=workload,
        batch=len(sequences),
        num_steps=num_steps,
        us_per_step={part: round(us, 1) for part, us in per_step.items()},
        total_us_per_step=round(total, 1),
        total_us_per_token=round(total * num_steps / num_tokens, 2),
    )


def measure_apply(vocab_size: int, batches: tuple[int, ...]) -> list[dict[str, Any]]:
    """corral's TokenMask.apply (numpy unpack and masked fill, what the engine runs) on float32
    logits [batch, vocab] by how many tokens each row allows (microseconds per call)."""
    rows = []
    for batch in batches:
        for allowed in ("all", "half", "one"):
            logits = torch.randn(batch, vocab_size)
            bitmask = new_bitmask(batch, vocab_size)
            if allowed != "all":
                bitmask.fill_(0x55555555 if allowed == "half" else 0)
                bitmask[:, 0] |= 1
            indices = list(range(batch))
            samples = []
            for _ in range(7):
                start = time.perf_counter()
                for _ in range(50):
                    TokenMask(bitmask, list(indices)).apply(logits)
                samples.append((time.perf_counter() - start) / 50)
            us = statistics.median(samples[1:]) * 1e6
            rows.append(dict(batch=batch, allowed=allowed, us_per_call=round(us, 1)))
    return rows


# ---- tables ---------------------------------------------------------------------------------


def print_compile(compile_times: dict[str, Any]) -> None:
    llg = compile_times["llguidance_tokenizer_ms"]
    print(
        f"\nbackend construction (xgrammar tokenizer info): {compile_times['tokenizer_info_ms']} "
        f"ms median, range {compile_times['tokenizer_info_ms_range']}"
        + (f"; llguidance tokenizer: {llg} ms" if llg is not None else "")
    )
    print(
        "| constraint | to Grammar ms | cold compile ms | cold range ms | cached ms | "
        "llguidance matcher ms |"
    )
    print("|---|---|---|---|---|---|")
    for row in compile_times["rows"]:
        low, high = row["cold_ms_range"]
        print(
            f"| {row['constraint']} | {row['convert_ms']:.2f} | {row['cold_ms']:.2f} | "
            f"{low:.2f}-{high:.2f} | {row['cached_ms']:.4f} | "
            f"{row.get('llguidance_matcher_ms', '-')} |"
        )


def print_mask(rows: list[dict[str, Any]], llguidance: str | None) -> None:
    if llguidance is None:
        print("\nllguidance is not importable: its rows are skipped (pip install llguidance)")
    print(
        "\n| workload | library | tokens | fill us/token | accept us/token | total us/token | "
        "refused | same mask as xgrammar |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        versus = row["mask_vs_xgrammar"]
        same = "-" if versus is None else f"{versus['identical']:.1%}"
        print(
            f"| {row['workload']} | {row['library']} | {row['num_tokens']} | "
            f"{row['fill_us_per_token']} | {row['accept_us_per_token']} | "
            f"{row['total_us_per_token']} | {row['num_refused']} | {same} |"
        )
        if versus is not None:
            print(f"  steps by how llguidance's mask compares with xgrammar's: {versus}")


def print_step(rows: list[dict[str, Any]], decode_us: dict[str, float]) -> None:
    """decode_us: the unconstrained decode time per token at the same batch, per workload."""
    print(
        "\n| workload | batch | steps | sample_mask us/step | take_empty_rows | apply | accept | "
        "total us/step | us/token | unconstrained decode us/token | mask path / decode |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        part = row["us_per_step"]
        ratio = row["total_us_per_token"] / decode_us[row["workload"]]
        row["share_of_unconstrained_decode"] = round(ratio, 4)
        print(
            f"| {row['workload']} | {row['batch']} | {row['num_steps']} | {part['sample_mask']} | "
            f"{part['take_empty_rows']} | {part['apply']} | {part['accept']} | "
            f"{row['total_us_per_step']} | {row['total_us_per_token']} | "
            f"{decode_us[row['workload']]} | {ratio:.1%} |"
        )


def print_apply(rows: list[dict[str, Any]]) -> None:
    print("\n| batch | tokens allowed per row | TokenMask.apply us/call | us/row |")
    print("|---|---|---|---|")
    for row in rows:
        per_row = row["us_per_call"] / row["batch"]
        print(f"| {row['batch']} | {row['allowed']} | {row['us_per_call']} | {per_row:.1f} |")
