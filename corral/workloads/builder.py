"""build_workload: dataset drafts + length scaling + an arrival process -> a Workload."""

from __future__ import annotations

import random
import zlib

from corral.workloads.arrivals import ArrivalOptions, make_arrivals
from corral.workloads.datasets import DATASETS, Draft
from corral.workloads.options import WorkloadOptions, draw_think_time
from corral.workloads.spec import RequestSpec, Workload
from corral.workloads.tokens import make_encoder


def _scaled(draft: Draft, options: WorkloadOptions) -> Draft | None:
    """Apply length_scale (synthetic lengths only) and the caps; None drops the draft (a text
    prompt that cannot fit max_model_len)."""
    num_prompt, num_output = draft.num_prompt_tokens, draft.num_output_tokens
    if draft.is_scalable and options.length_scale != 1.0:
        num_prompt = max(1, round(num_prompt * options.length_scale))
        num_output = max(1, round(num_output * options.length_scale))
    if options.max_output_len is not None:
        num_output = min(num_output, options.max_output_len)
    limit = options.max_model_len
    if limit is not None:
        room = limit - num_prompt if draft.may_fill_context else limit // 2
        num_output = min(num_output, max(1, room))
    synthetic = draft.prompt_token_ids is None
    if options.max_prompt_len is not None and num_prompt > options.max_prompt_len:
        if not synthetic:
            return None
        num_prompt = options.max_prompt_len
    if limit is not None and num_prompt + num_output > limit:
        if not synthetic:
            return None
        num_prompt = limit - num_output
    draft.num_prompt_tokens, draft.num_output_tokens = num_prompt, num_output
    return draft


def _default_arrival(drafts: list[Draft]) -> ArrivalOptions:
    if drafts and all(draft.trace_time_s is not None for draft in drafts):
        return ArrivalOptions(kind="trace")
    return ArrivalOptions(kind="burst")


def build_workload(options: WorkloadOptions) -> Workload:
    """Build the workload options describe. Deterministic: the same options give the same
    specs, times and token ids. Raises ValueError for bad options, FileNotFoundError for a
    missing data file."""
    dataset = DATASETS.get(options.dataset)()
    rng = random.Random(options.seed)
    encoder = make_encoder(options.tokenizer, options.vocab_size)
    raw = dataset.drafts(options, encoder, rng)
    drafts = [scaled for draft in raw if (scaled := _scaled(draft, options)) is not None]
    num_dropped = len(raw) - len(drafts)
    if not drafts:
        raise ValueError(f"the {options.dataset} workload is empty after scaling and sampling")
    arrival = options.arrival or _default_arrival(drafts)
    process = make_arrivals(arrival)
    # Turn 0 of a conversation (or any non-conversation draft) gets an arrival time.
    starters = [draft for draft in drafts if draft.turn_index == 0]
    trace_times = None
    if arrival.kind == "trace":
        trace_times = [draft.trace_time_s for draft in starters]
        if any(t is None for t in trace_times):
            raise ValueError(f"the {options.dataset} dataset has no timestamps for trace arrivals")
    times = process.times(len(starters), options.seed, trace_times)  # type: ignore[arg-type]
    num_samples = options.samples_per_request or dataset.default_samples_per_request
    tags = random.Random(options.seed + 1)
    pauses = random.Random(options.seed + 2)
    tag_of: dict[int, tuple[str | None, int]] = {}
    start_of: dict[int | None, float] = {}
    specs: list[RequestSpec] = []
    previous_id: dict[int, str] = {}
    starter_index = 0
    for index, draft in enumerate(drafts):
        request_id = f"{options.dataset}-{index}"
        if draft.turn_index == 0:
            arrival_s = times[starter_index]
            starter_index += 1
            start_of[draft.conversation_index] = arrival_s
        else:
            arrival_s = start_of[draft.conversation_index]
        conversation = draft.conversation_index
        key = index if conversation is None else -1 - conversation
        if key not in tag_of:
            client = tags.randrange(options.num_clients) if options.num_clients else None
            tag_of[key] = (
                None if client is None else f"client-{client}",
                tags.randrange(options.num_priorities) if options.num_priorities else 0,
            )
        client_id, priority = tag_of[key]
        specs.append(
            RequestSpec(
                request_id=request_id,
                arrival_time_s=arrival_s,
                num_prompt_tokens=draft.num_prompt_tokens,
                num_output_tokens=draft.num_output_tokens,
                prompt=draft.prompt,
                prompt_token_ids=(
                    draft.prompt_token_ids[: draft.num_prompt_tokens]
                    if draft.prompt_token_ids is not None
                    else None
                ),
                token_seed=zlib.crc32(f"{options.seed}:{index}".encode()),
                client_id=client_id,
                priority=priority,
                conversation_id=None if conversation is None else f"conv-{conversation}",
                turn_index=draft.turn_index,
                parent_request_id=previous_id.get(conversation) if draft.turn_index else None,
                think_time_s=(
                    draw_think_time(pauses, options.think_time_s, options.think_time_dist)
                    if draft.turn_index
                    else 0.0
                ),
                new_prompt=draft.new_prompt,
                samples_per_request=num_samples,
                rag_chunk_spans=draft.rag_chunk_spans,
            )
        )
        if conversation is not None:
            previous_id[conversation] = request_id
    description = {
        "dataset": options.dataset,
        "num_requests": len(specs),
        "num_dropped_too_long": num_dropped,
        "arrival": arrival.kind,
        "seed": options.seed,
        "samples_per_request": num_samples,
    }
    if any(spec.parent_request_id for spec in specs):
        description["think_time"] = f"{options.think_time_s:g} s {options.think_time_dist}"
    return Workload(options.dataset, specs, options.vocab_size, description)
