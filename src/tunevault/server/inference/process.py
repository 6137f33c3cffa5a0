"""The inference process: a long-lived child answering JSON-line generation requests with a 4-bit base and cached LoRA adapters.

    python -m tunevault.server.inference.process

Reads one request per line on stdin and writes one answer per request on stdout, in the JSON
lines of inference/protocol.py. The base model is loaded in 4-bit NF4 exactly as training loads it, so an adapter meets the base
it was trained on; adapters are cached by directory. The gRPC server starts this as a child and
never imports torch itself. Logs go to stderr.

Zero egress: the process refuses non-loopback network access (egress_guard), and once anything in
it has tried, every answer is that error instead of a completion, until the process is restarted.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tunevault.server.inference import protocol
from tunevault.server.inference.protocol import Completion, Request, RequestError
from tunevault.server.inference.streamed_text import StreamedText, cut_at_stop
from tunevault.server.privacy import egress_guard
from tunevault.server.training.runtime import force_offline

log = logging.getLogger("tunevault.inference")

ADAPTER_CACHE_SIZE = 8  # adapters kept loaded; each is a few MB for a small model


class Engine:
    """One base model in 4-bit, a PEFT wrapper once an adapter is asked for, and an LRU of adapters."""

    def __init__(self) -> None:
        from tunevault.server.training import quantized_model

        self.device = quantized_model.pick_device()
        self.compute_dtype = quantized_model.pick_compute_dtype(self.device)
        self.base_dir: Path | None = None
        self.model: Any = None
        self.tokenizer: Any = None
        self.adapters: OrderedDict[str, str] = OrderedDict()  # resolved adapter dir -> adapter name
        self._names = 0

    def _load_base(self, base_dir: Path) -> None:
        from transformers import AutoTokenizer

        from tunevault.server.training import quantized_model

        started = time.perf_counter()
        self.model = self.tokenizer = None  # drop the old model before loading a new one
        self.adapters.clear()
        self.tokenizer = AutoTokenizer.from_pretrained(str(base_dir), local_files_only=True)
        # Inference never trains, so bitsandbytes may repack weights for its fast CPU kernel here;
        # the pin_cpu_weight_layout() that training needs is deliberately not applied.
        self.model = quantized_model.load_quantized_base(base_dir, self.device, self.compute_dtype).eval()
        self.base_dir = base_dir
        log.info("loaded base %s in %.1fs", base_dir, time.perf_counter() - started)

    def _activate(self, adapter_dir: Path | None) -> bool:
        """Make `adapter_dir` the active adapter; returns False when the base alone should answer."""
        if adapter_dir is None:
            return False
        from peft import PeftModel

        key = str(adapter_dir.resolve())
        name = self.adapters.get(key)
        if name is None:
            self._names += 1
            name = f"adapter_{self._names}"
            with plain_adapter(adapter_dir) as source:
                if isinstance(self.model, PeftModel):
                    self.model.load_adapter(str(source), adapter_name=name, is_trainable=False)
                else:
                    self.model = PeftModel.from_pretrained(self.model, str(source), adapter_name=name, is_trainable=False)
            self.adapters[key] = name
            log.info("loaded adapter %s as %s", key, name)
            while len(self.adapters) > ADAPTER_CACHE_SIZE:
                _, evicted = self.adapters.popitem(last=False)
                self.model.delete_adapter(evicted)
        self.adapters.move_to_end(key)
        self.model.set_adapter(name)
        self.model.eval()
        return True

    def generate(self, request: Request, send: Callable[[str], None] | None = None) -> Completion:
        """The completion; with `send`, its text is also handed over piece by piece as it is generated."""
        import torch
        from peft import PeftModel
        from transformers import GenerationConfig

        if self.base_dir is None or self.base_dir.resolve() != request.base_model_dir.resolve():
            self._load_base(request.base_model_dir)
        use_adapter = self._activate(request.adapter_dir)
        tokenizer = self.tokenizer
        if request.raw or (use_adapter and trained_on_plain_text(request.adapter_dir)):
            # Prompt/completion and text adapters learnt to continue raw text, as they were trained.
            ids = tokenizer(request.prompt, add_special_tokens=True)["input_ids"]
        else:
            messages = ([{"role": "system", "content": request.system}] if request.system else []) + [
                *request.history, {"role": "user", "content": request.prompt}
            ]
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        input_ids = torch.tensor([ids], device=self.device)
        limit = getattr(self.model.config, "max_position_embeddings", None)
        if limit and input_ids.shape[1] + request.max_tokens > limit:
            raise RequestError(f"prompt ({input_ids.shape[1]} tokens) plus max_tokens exceeds the model's {limit}")
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        sampling = request.temperature > 0
        config = GenerationConfig(
            max_new_tokens=request.max_tokens,
            do_sample=sampling,
            temperature=request.temperature if sampling else None,
            top_p=request.top_p if sampling else None,
            top_k=None,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=pad,
            stop_strings=request.stop or None,
        )
        if request.seed is not None:
            torch.manual_seed(request.seed)
        # The base alone answers a request without an adapter, even once adapters are loaded.
        base_only = isinstance(self.model, PeftModel) and not use_adapter

        def decode(generated: list[int]) -> str:
            if tokenizer.eos_token_id in generated:
                generated = generated[: generated.index(tokenizer.eos_token_id)]
            return tokenizer.decode(generated, skip_special_tokens=True)

        pieces = StreamedText(decode, request.stop, send) if send is not None else None
        with torch.no_grad(), (self.model.disable_adapter() if base_only else contextlib.nullcontext()):
            output = self.model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                generation_config=config,
                tokenizer=tokenizer,
                streamer=_TokenFeed(pieces) if pieces is not None else None,
            )
        generated = output[0, input_ids.shape[1] :].tolist()
        produced = len(generated)  # every generated token counts, the closing end-of-turn too (as vLLM counts)
        # Like the OpenAI API: the completion ends before the first stop string, which is not included.
        completion, stopped = cut_at_stop(decode(generated), request.stop)
        ran_out = produced >= request.max_tokens and not stopped and tokenizer.eos_token_id not in generated
        if pieces is not None:
            pieces.finish(completion)
        return Completion(text=completion, tokens=produced, prompt_tokens=len(ids),
                          finish_reason="length" if ran_out else "stop")


class _TokenFeed:
    """A transformers streamer: generate() hands it the prompt once, then each new token."""

    def __init__(self, pieces: StreamedText) -> None:
        self.pieces = pieces
        self.prompt_seen = False

    def put(self, value: Any) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        self.pieces.add(value.reshape(-1).tolist())

    def end(self) -> None:
        pass


@contextlib.contextmanager
def plain_adapter(adapter_dir: Path) -> Iterator[Path]:
    """The adapter folder to load from: itself when plaintext, else a decrypted copy on a tmpfs.

    The copy lives only while PEFT reads it; the weights then stay in this process's memory.
    """
    from tunevault.server.privacy.sealing import scratch
    from tunevault.server.privacy.sealing.encryption import is_sealed, unseal_tree

    if not is_sealed(adapter_dir / "adapter_config.json"):
        yield adapter_dir
        return
    workspace = scratch.make_private_dir("tunevault-inference-")
    try:
        unseal_tree(adapter_dir, workspace / "adapter")
        yield workspace / "adapter"
    finally:
        scratch.remove(workspace)


def trained_on_plain_text(adapter_dir: Path | None) -> bool:
    """Whether the job behind an adapter trained on prompt/completion or text rows (no chat template)."""
    if adapter_dir is None:
        return False
    from tunevault.server.privacy.sealing.encryption import open_plain

    try:
        with open_plain(Path(adapter_dir) / "metrics.json") as handle:  # sealed at rest
            metrics = json.loads(handle.read())
    except (OSError, ValueError):
        return False  # adapters from before formats existed were all chats
    return metrics.get("data", {}).get("format") in ("completion", "text")


def _line_writer(stdout: Any, request_id: str) -> Callable[[str], None]:
    def send(piece: str) -> None:
        stdout.write(protocol.Delta(request_id, piece).to_line())
        stdout.flush()
    return send


def serve(stdin: Any, stdout: Any) -> int:
    engine = Engine()
    for line in stdin:
        if not line.strip():
            continue
        request_id: str | None = None
        try:
            request_id = protocol.request_id(line)
            request = protocol.Request.parse_line(line)
            send = _line_writer(stdout, request.id) if request.stream else None
            completion = engine.generate(request, send)
            # Checked after the work: a library may have swallowed the EgressBlocked it met.
            egress_guard.raise_if_blocked()
            answer = protocol.Answer.of(request.id, completion)
        except protocol.RequestError as exc:
            answer = protocol.Answer(request_id, error=str(exc))
        except egress_guard.EgressBlocked as exc:
            log.error("request %s refused: %s", request_id, exc)
            answer = protocol.Answer(request_id, error=str(exc))
        except Exception as exc:  # noqa: BLE001 - one bad request must not take the process down
            log.exception("request %s failed", request_id)
            answer = protocol.Answer(request_id, error=f"{type(exc).__name__}: {exc}")
        try:
            stdout.write(answer.to_line())
            stdout.flush()
        except BrokenPipeError:
            return 0  # the server is gone; so are we
    return 0


def main() -> int:
    # Offline and guarded before anything imports torch or transformers.
    force_offline()
    egress_guard.install()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from tunevault.server.training.runtime import quiet_progress_bars, set_threads

    quiet_progress_bars()
    set_threads()
    try:
        return serve(sys.stdin, sys.stdout)
    finally:
        # Avoid a second BrokenPipeError from the interpreter's final flush.
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


if __name__ == "__main__":
    sys.exit(main())
