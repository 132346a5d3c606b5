"""StructuredOutputManager: compiles requests' grammars off the engine loop (engine core side).

A request with a structured output constraint waits here, outside the scheduler, while a worker
thread compiles its grammar (cached by the constraint, so repeats cost nothing); each engine
step collects the finished compiles, and the requests go on to the scheduler. A compile never
blocks a step, so no other request waits for it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, NamedTuple

from corral.request import Request
from corral.structured import xgrammar_backend  # noqa: F401  (registers "xgrammar")
from corral.structured.backend import DEFAULT_BACKEND, GRAMMAR_BACKENDS, GrammarBackend


class CompileOutcome(NamedTuple):
    request: Request
    error: str | None  # None: request.grammar is set (or it needs none)


class StructuredOutputManager:
    """Owns the grammar backend (built on first use) and the compiles in flight."""

    def __init__(
        self,
        make_tokenizer: Callable[[], Any],
        vocab_size: int,
        stop_token_ids: list[int],
        backend_name: str = DEFAULT_BACKEND,
        max_num_compile_threads: int = 1,
    ) -> None:
        self._make_tokenizer = make_tokenizer
        self.vocab_size = vocab_size
        self.stop_token_ids = stop_token_ids
        self.backend_name = backend_name
        GRAMMAR_BACKENDS.get(backend_name)  # an unknown name fails at start-up
        self._backend: GrammarBackend | None = None
        self.max_num_compile_threads = max_num_compile_threads
        self._pool: ThreadPoolExecutor | None = None
        self._pending: dict[str, tuple[Request, Future[Any]]] = {}

    @property
    def backend(self) -> GrammarBackend:
        if self._backend is None:
            backend_class = GRAMMAR_BACKENDS.get(self.backend_name)
            self._backend = backend_class(
                self._make_tokenizer(), self.vocab_size, self.stop_token_ids
            )
        return self._backend

    @staticmethod
    def needs_constraint(request: Request) -> bool:
        params = request.sampling_params
        return params.structured_output is not None or params.reasoning is not None

    def submit(self, request: Request) -> None:
        """Start compiling the request's grammar; it waits here until collect() returns it."""
        params = request.sampling_params.structured_output
        backend = self.backend
        future: Future[Any]
        compiled = backend.cached(params) if params is not None else None
        if params is None or compiled is not None:
            # Nothing to compile: ready at this step (a worker thread would wait for the GIL).
            future = Future()
            future.set_result(compiled)
        else:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.max_num_compile_threads, "corral-grammar")
            future = self._pool.submit(backend.compile, params)
        self._pending[request.request_id] = (request, future)

    def collect(self) -> list[CompileOutcome]:
        """The requests whose compile finished since the last call, in submission order."""
        done = []
        for request_id, (request, future) in list(self._pending.items()):
            if not future.done():
                continue
            del self._pending[request_id]
            error = future.exception()
            if error is None:
                request.grammar = future.result()
            done.append(CompileOutcome(request, None if error is None else str(error)))
        return done

    def discard(self, request_ids: Iterable[str]) -> list[Request]:
        """Forget pending requests (aborted); returns those that were pending."""
        return [
            entry[0] for request_id in request_ids if (entry := self._pending.pop(request_id, None))
        ]

    @property
    def num_pending(self) -> int:
        return len(self._pending)

    def shutdown(self) -> None:
        """Stop the compile thread (a later submit starts another)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
