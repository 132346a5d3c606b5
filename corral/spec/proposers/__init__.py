"""Registered proposers. Importing this package registers the torch-free ones (ngram, suffix);
the draft-model proposer registers when corral.spec.proposers.draft is imported (torch)."""

from corral.spec.proposers import ngram, suffix  # noqa: F401  (registration)
