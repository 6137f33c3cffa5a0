"""User-supplied canary secrets are write-only: sealed in the job folder at CreateJob, never stored in plaintext.

A memorization audit may plant strings the user chose (a real-looking account number, a phrase
from a contract) to see whether the fine-tune can be made to repeat them. Those strings are as
sensitive as the dataset, so the job row, the audit log, spec.json, GetJob and the report carry
PLACEHOLDER in their place (the count still checks against canary_repetitions), and the strings
themselves live only in FILE_NAME, sealed under the job's data key. The worker reads them into
memory; deleting the job destroys the key and so the secrets.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tunevault.server.privacy.sealing.encryption import KeyLookup, open_plain, sealed_output
from tunevault.server.privacy.sealing.keys import DataKey

PLACEHOLDER = "<sealed>"
FILE_NAME = "canary_secrets.sealed"
FIELD = "canary_secrets"


class SecretsUnavailable(RuntimeError):
    """The job names sealed secrets but their file is missing: the job cannot plant them."""


def withhold(hyperparameters: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The hyperparameters to store (each secret replaced by PLACEHOLDER) and the secrets themselves.

    Raises ValueError when a secret is the placeholder itself: hyperparameters copied from GetJob
    would otherwise plant the word "<sealed>" and audit nothing.
    """
    secrets = [str(s) for s in hyperparameters.get(FIELD) or []]
    if PLACEHOLDER in secrets:
        raise ValueError(f"{PLACEHOLDER!r} is how a stored secret is shown, not a secret; send the secret itself")
    if not secrets:
        return hyperparameters, []
    return {**hyperparameters, FIELD: [PLACEHOLDER] * len(secrets)}, secrets


def seal(secrets: list[str], job_dir: Path, key: DataKey) -> Path:
    """Writes the secrets sealed under the job's key (atomically: never a partial FILE_NAME)."""
    target = job_dir / FILE_NAME
    with sealed_output(target, key.id, key.key) as out:
        out.write(json.dumps(secrets).encode())
    return target


def restore(secrets_field: Sequence[str], job_dir: Path, keys: KeyLookup | None) -> tuple[str, ...]:
    """The secrets to plant: from the sealed file where the job's canary_secrets are placeholders, else as given.

    A worker run by hand on a plain spec (no key store, as the benchmarks do) passes its secrets
    in the hyperparameters themselves.
    """
    given = [str(s) for s in secrets_field]
    if PLACEHOLDER not in given:
        return tuple(given)
    path = job_dir / FILE_NAME
    if keys is None or not path.is_file():
        raise SecretsUnavailable(f"the job's canary_secrets are sealed in {path}, which cannot be read here")
    with open_plain(path, keys) as handle:
        secrets = json.loads(handle.read())
    if len(secrets) != len(given):
        raise SecretsUnavailable(f"{path} holds {len(secrets)} secret(s); the job names {len(given)}")
    return tuple(secrets)
