"""Later turns of a conversation: sent think_time_s after the parent's last token, with the
parent's prompt and its real reply as context; skipped (and counted) when the parent failed."""

from __future__ import annotations

import pytest

from corral.workloads import WorkloadOptions, build_workload
from tests.bench.scripted import Script, chat_chunk, run_scripted, token_script, usage_chunk

THINK_S = 0.3


def conversations(num_requests: int = 6) -> object:
    return build_workload(
        WorkloadOptions(
            dataset="multi-turn",
            num_requests=num_requests,
            num_turns=3,
            input_len=5,
            output_len=4,
            think_time_s=THINK_S,
            seed=3,
        )
    )


def test_completion_turns_follow_their_parents_end_plus_think_time():
    workload = conversations()
    # Every request: first token 0.1 s after it is sent, then 3 more 0.1 s apart (e2e 0.4 s).
    run, transport = run_scripted(workload, lambda path, body: token_script(0.1, 0.1, 4))
    by_id = {record.record.request_id: record for record in run.records}
    for spec in workload:
        record = by_id[spec.request_id]
        assert record.record.is_ok
        if spec.parent_request_id is None:
            assert record.record.arrival_time_s == pytest.approx(spec.arrival_time_s)
            continue
        parent = by_id[spec.parent_request_id].record
        expected = parent.token_times_s[-1] + THINK_S
        assert record.scheduled_time_s == pytest.approx(expected)
        assert record.record.arrival_time_s == pytest.approx(expected)
    assert len(transport.requests) == len(workload)
    # The context of a later turn is the parent's prompt, the reply ("tttt"), then the new
    # user message.
    turn1 = next(spec for spec in workload if spec.turn_index == 1)
    turn0 = next(spec for spec in workload if spec.request_id == turn1.parent_request_id)
    body = next(p for _, _, p in transport.requests if p["prompt"].startswith(turn0.prompt + "t"))
    turn1_prompt = f"{turn0.prompt}tttt\nUser: {turn1.new_prompt}\nAssistant:"
    assert body["prompt"] == turn1_prompt
    turn2 = next(spec for spec in workload if spec.parent_request_id == turn1.request_id)
    expected = f"{turn1_prompt}tttt\nUser: {turn2.new_prompt}\nAssistant:"
    assert any(p["prompt"] == expected for _, _, p in transport.requests)


def test_chat_turns_carry_the_conversation_as_messages():
    workload = conversations(3)

    def reply(path: str, body: dict) -> Script:
        assert path == "/v1/chat/completions"
        turn = len(body["messages"]) // 2
        lines = [
            (0.1, chat_chunk("", role="assistant")),
            (0.1, chat_chunk(f"reply{turn}")),
            (0.2, chat_chunk(" end", finish="length")),
            (0.2, usage_chunk(7, 4)),
            (0.2, b"data: [DONE]\n"),
        ]
        return Script(lines)

    run, transport = run_scripted(workload, reply, endpoint="chat")
    assert all(record.record.is_ok for record in run.records)
    # The role-only chunk is not an output event: two events per request.
    assert all(len(record.record.token_times_s) == 2 for record in run.records)
    messages = [payload["messages"] for _, _, payload in transport.requests]
    specs = list(workload)
    assert messages[0] == [{"role": "user", "content": specs[0].new_prompt}]
    assert messages[2] == [
        {"role": "user", "content": specs[0].new_prompt},
        {"role": "assistant", "content": "reply0 end"},
        {"role": "user", "content": specs[1].new_prompt},
        {"role": "assistant", "content": "reply1 end"},
        {"role": "user", "content": specs[2].new_prompt},
    ]


def test_turns_after_a_failed_turn_are_counted_as_failed_not_dropped():
    workload = conversations(3)

    def script(path: str, body: dict) -> Script:
        if "tttt" in body["prompt"]:
            return Script(status=500, body='{"error": {"message": "boom"}}')
        return token_script(0.1, 0.1, 4)

    run, transport = run_scripted(workload, script)
    assert len(transport.requests) == 2  # turn 2 was never sent
    errors = [record.record.error for record in run.records]
    assert errors[0] is None
    assert errors[1] == "HTTP 500: boom"
    assert errors[2] == "not sent: an earlier turn of its conversation failed"
    assert [record.is_sent for record in run.records] == [True, True, False]


def test_session_ids_and_announced_pauses_go_with_each_turn():
    from corral.bench.payload import NO_NEXT_TURN_PAUSE_S

    workload = conversations()
    _, transport = run_scripted(
        workload,
        lambda path, body: token_script(0.1, 0.1, 4),
        send_session_ids=True,
        send_session_pauses=True,
    )
    seen = 0
    for _, _, body in transport.requests:  # each turn's prompt ends with its own new message
        spec = next(s for s in workload if body["prompt"].endswith(s.new_prompt + "\nAssistant:"))
        assert body["session_id"] == spec.conversation_id
        last_turn = spec.turn_index == 2
        expected = NO_NEXT_TURN_PAUSE_S if last_turn else THINK_S
        assert body["session_pause_s"] == pytest.approx(expected)
        seen += 1
    assert seen == len(workload)
    _, transport = run_scripted(workload, lambda path, body: token_script(0.1, 0.1, 4))
    assert all("session_id" not in body for _, _, body in transport.requests)
