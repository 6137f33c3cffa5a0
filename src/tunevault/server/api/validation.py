"""Field checks shared by the servicer: each failure names the field it is about."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from tunevault.server.contract.preference_rows import PREFERENCE_FORMATS
from tunevault.server.contract.text_checks import unencodable_field
from tunevault.server.errors import FailedPrecondition, InvalidArgument
from tunevault.server.feedback import FeedbackTexts
from tunevault.server.privacy.sealing.encryption import open_plain
from tunevault.v1 import tunevault_pb2 as pb

MAX_LABEL_CHARS = 200
MAX_ID_CHARS = 64
MAX_PROMPT_CHARS = 32_000
MAX_NEW_TOKENS = 4096
MAX_STOP_SEQUENCES = 8
MAX_PRIORITY = 1000
MAX_ATTEMPTS = 20
MAX_SCHEDULE_AHEAD_SECONDS = 366 * 86400


def bounded(field: str, value: str, limit: int = MAX_LABEL_CHARS) -> str:
    if len(value) > limit:
        raise InvalidArgument(field, f"longer than {limit} characters")
    return value


def required_id(field: str, value: str) -> str:
    if not value:
        raise InvalidArgument(field, "is required")
    if not value.isascii() or not value.isprintable():
        raise InvalidArgument(field, "ids are printable ASCII")
    return bounded(field, value, MAX_ID_CHARS)


def priority(value: int) -> int:
    if not -MAX_PRIORITY <= value <= MAX_PRIORITY:
        raise InvalidArgument("priority", f"must be between -{MAX_PRIORITY} and {MAX_PRIORITY}")
    return value


def max_attempts(value: int) -> int:
    if not 0 <= value <= MAX_ATTEMPTS:
        raise InvalidArgument("max_attempts", f"must be between 1 and {MAX_ATTEMPTS} (0 for the default 3)")
    return value or 3


def not_before(request: pb.CreateJobRequest) -> float | None:
    if not request.HasField("not_before"):
        return None
    seconds = request.not_before.seconds + request.not_before.nanos / 1e9
    if seconds < 0 or seconds > time.time() + MAX_SCHEDULE_AHEAD_SECONDS:
        raise InvalidArgument("not_before", "must be within a year from now")
    return seconds


def gpus(request: pb.CreateJobRequest, box: tuple[int, ...]) -> int | None:
    """GPUs the job asks for; None (unset) leaves the box's default. More than the box has could never start."""
    if not request.HasField("gpus"):
        return None
    if request.gpus < 0:
        raise InvalidArgument("gpus", "must be 0 (CPU) or a positive number of GPUs")
    if request.gpus > len(box):
        raise FailedPrecondition(f"gpus: the job asks for {request.gpus} GPU(s); this server has {len(box)}")
    return request.gpus


def training_method(value: int) -> str:
    """sft, dpo or orpo; UNSPECIFIED is SFT, what every job did before methods existed."""
    if value == pb.TRAINING_METHOD_UNSPECIFIED:
        return "sft"
    if value not in (pb.TRAINING_METHOD_SFT, pb.TRAINING_METHOD_DPO, pb.TRAINING_METHOD_ORPO):
        raise InvalidArgument("method", "must be TRAINING_METHOD_SFT, TRAINING_METHOD_DPO or TRAINING_METHOD_ORPO")
    return pb.TrainingMethod.Name(value).removeprefix("TRAINING_METHOD_").lower()


def method_fits(method: str, requested: dict[str, Any], formats: dict[str, str]) -> None:
    """A preference method needs preference rows and SFT needs SFT rows; DP is SFT-only for now.

    formats maps the request field of each dataset to its stored row format.
    """
    preference = method in ("dpo", "orpo")
    for field, data_format in formats.items():
        if (data_format in PREFERENCE_FORMATS) != preference:
            wanted = ("a preference dataset (prompt/chosen/rejected or OpenAI DPO rows)" if preference else
                      "an SFT dataset (chat, instruction, completion or text rows); "
                      "use method DPO or ORPO for preference rows")
            raise InvalidArgument(field, f"holds {data_format} rows, but method {method.upper()} needs {wanted}")
    if not preference:
        for name in ("preference_beta", "orpo_lambda"):
            if name in requested:
                raise InvalidArgument(f"hyperparameters.{name}", "has an effect only with method DPO or ORPO")
        return
    if "orpo_lambda" in requested and method != "orpo":
        raise InvalidArgument("hyperparameters.orpo_lambda", "has an effect only with method ORPO")
    if "preference_beta" in requested and method != "dpo":
        raise InvalidArgument("hyperparameters.preference_beta", "has an effect only with method DPO")
    if requested.get("canary_repetitions"):
        # The audit plants canaries as SFT rows; a preference job has no place for them yet.
        raise InvalidArgument("hyperparameters.canary_repetitions", f"the memorization audit is not available with "
                                                                    f"method {method.upper()} yet")


def pii_mode(value: int) -> str:
    if value == pb.PII_MODE_UNSPECIFIED:
        return "off"
    if value not in (pb.PII_MODE_OFF, pb.PII_MODE_REDACT, pb.PII_MODE_REJECT):
        raise InvalidArgument("pii", "must be PII_MODE_OFF, PII_MODE_REDACT or PII_MODE_REJECT")
    return pb.PiiMode.Name(value).removeprefix("PII_MODE_").lower()


def role_name(value: int) -> str:
    if value not in (pb.ROLE_VIEWER, pb.ROLE_SUBMITTER, pb.ROLE_ADMIN):
        raise InvalidArgument("role", "must be ROLE_VIEWER, ROLE_SUBMITTER or ROLE_ADMIN")
    return pb.Role.Name(value).removeprefix("ROLE_").lower()


def _check_history(history) -> None:
    """Earlier turns: user, assistant, user, assistant ... (the prompt is the next user turn)."""
    if len(history) % 2:
        raise InvalidArgument("history", "must end with an assistant turn (the prompt is the next user message)")
    total = 0
    for index, turn in enumerate(history):
        expected = "user" if index % 2 == 0 else "assistant"
        if turn.role != expected:
            raise InvalidArgument(f"history[{index}].role", f"must be {expected!r} (turns alternate, user first)")
        total += len(turn.content)
    if total > MAX_PROMPT_CHARS:
        raise InvalidArgument("history", f"longer than {MAX_PROMPT_CHARS} characters in all")


def generation(request: pb.GenerateRequest) -> tuple[int, float]:
    """Checks the sampling fields; returns (max_tokens, top_p) with their defaults applied."""
    if not request.prompt.strip():
        raise InvalidArgument("prompt", "is empty")
    bounded("prompt", request.prompt, MAX_PROMPT_CHARS)
    bounded("system", request.system, MAX_PROMPT_CHARS)
    _check_history(request.history)
    max_tokens = request.max_tokens or 128
    if not 1 <= max_tokens <= MAX_NEW_TOKENS:
        raise InvalidArgument("max_tokens", f"must be between 1 and {MAX_NEW_TOKENS}")
    if not (math.isfinite(request.temperature) and 0 <= request.temperature <= 5):
        raise InvalidArgument("temperature", "must be between 0 and 5")
    top_p = request.top_p or 1.0
    if not (math.isfinite(top_p) and 0 < top_p <= 1):
        raise InvalidArgument("top_p", "must be in (0, 1]")
    if len(request.stop) > MAX_STOP_SEQUENCES or any(not s or len(s) > MAX_LABEL_CHARS for s in request.stop):
        raise InvalidArgument("stop", f"at most {MAX_STOP_SEQUENCES} non-empty strings of at most {MAX_LABEL_CHARS} characters")
    if request.raw and (request.system or request.history):
        raise InvalidArgument("raw", "a raw prompt is continued as plain text: give no system message or history")
    return max_tokens, top_p


def _text(field: str, value: str, *, required: bool) -> str:
    """A free text of a request: valid Unicode, within MAX_PROMPT_CHARS, and not blank when required."""
    if unencodable_field(value) is not None:  # protobuf refuses bad UTF-8; this guards any other way in
        raise InvalidArgument(field, "holds a lone UTF-16 surrogate: not valid Unicode text")
    if required and not value.strip():
        raise InvalidArgument(field, "is empty")
    return bounded(field, value, MAX_PROMPT_CHARS)


def feedback(request: pb.RecordFeedbackRequest) -> tuple[int, FeedbackTexts]:
    """Checks a RecordFeedback request; returns (rating, texts). Needs a rating, a rewrite, or both."""
    if request.rating not in (-1, 0, 1):
        raise InvalidArgument("rating", "must be 1 (good), -1 (bad) or 0 (none, with a preferred_completion)")
    prompt = _text("prompt", request.prompt, required=True)
    system = _text("system", request.system, required=False)
    _check_history(request.history)
    for index, turn in enumerate(request.history):
        # An empty turn could not become a preference row (an empty answer teaches nothing).
        _text(f"history[{index}].content", turn.content, required=True)
    completion = _text("completion", request.completion, required=True)
    rewrite = _text("preferred_completion", request.preferred_completion, required=False)
    if rewrite and not rewrite.strip():
        raise InvalidArgument("preferred_completion", "is blank: leave it unset, or give the better answer")
    if not request.rating and not rewrite:
        raise InvalidArgument("rating", "give a rating (1 good, -1 bad), a preferred_completion, or both")
    if rewrite == completion:
        raise InvalidArgument("preferred_completion", "is the same text as completion: there is nothing to prefer")
    history = tuple((turn.role, turn.content) for turn in request.history)
    return request.rating, FeedbackTexts(prompt=prompt, system=system, history=history, completion=completion,
                                         preferred_completion=rewrite)


def checkpoint_metrics(path: Path) -> dict[str, float]:
    """Numbers from a checkpoint's record of itself, whatever file it keeps them in."""
    for name in ("checkpoint.json", "state.json", "metrics.json"):
        try:
            with open_plain(path / name) as handle:  # checkpoints are sealed at rest
                data = json.loads(handle.read())
        except (OSError, ValueError, FailedPrecondition):  # unreadable, or its key destroyed
            continue
        data = data.get("metrics", data) if isinstance(data, dict) else {}
        return {k: float(v) for k, v in data.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return {}
