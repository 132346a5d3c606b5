"""`rag`: retrieval-augmented prompts: a system prompt, num_rag_chunks documents drawn from a
pool of num_groups in a random order, and a question (RAG chunk reuse, docs/rag.md)."""

from __future__ import annotations

import random

from corral.workloads.datasets.base import DATASETS, Dataset, Draft, num_wanted
from corral.workloads.datasets.random_lengths import draw_length
from corral.workloads.options import WorkloadOptions
from corral.workloads.text import filler_text
from corral.workloads.tokens import TextEncoder


@DATASETS.register("rag")
class RetrievedChunks(Dataset):
    """Documents of about prefix_len words (default 256) each; every request names the ones it
    retrieved (Draft.rag_chunk_spans), each tokenized alone, as the engine's piecewise
    tokenization does; a question of about input_len words ends the prompt."""

    def drafts(
        self, options: WorkloadOptions, encoder: TextEncoder, rng: random.Random
    ) -> list[Draft]:
        count = num_wanted(self, options) or 0
        if options.num_rag_chunks > options.num_groups:
            raise ValueError(
                f"num_rag_chunks ({options.num_rag_chunks}) must be <= num_groups "
                f"({options.num_groups}), the documents to draw them from"
            )
        doc_len = options.prefix_len or 256
        system_ids = encoder.encode("Answer from the documents below.\n\n")
        documents = [
            encoder.encode(f"Document {index}: " + filler_text(rng, doc_len) + "\n\n")
            for index in range(options.num_groups)
        ]
        drafts = []
        for _ in range(count):
            ids = list(system_ids)
            spans = []
            for index in rng.sample(range(options.num_groups), options.num_rag_chunks):
                spans.append((len(ids), len(documents[index])))
                ids += documents[index]
            num_words = draw_length(
                rng, options.input_len, options.range_ratio, options.length_distribution
            )
            ids += encoder.encode("Question: " + filler_text(rng, num_words))
            num_output = draw_length(
                rng, options.output_len, options.range_ratio, options.length_distribution
            )
            draft = Draft(len(ids), num_output, prompt_token_ids=tuple(ids))
            draft.rag_chunk_spans = tuple(spans)
            drafts.append(draft)
        return drafts
