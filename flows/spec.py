"""SweepSpec: the one parameter of the sweep flow (a form in the Prefect UI), and its presets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from flows.spec_errors import describe_validation_error, one_line
from storage.errors import UserError
from tasks.model import MAX_D_MODEL, MAX_LAYERS, ModelShape

MAX_MODEL_PARAMS = ModelShape(MAX_D_MODEL, MAX_LAYERS).params_nonembedding()  # larger targets get no shape
MAX_BOOTSTRAP = 10_000


class SpecError(UserError):
    """A spec that cannot run; the message is one sentence naming the field and the fix."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CorpusSpec(_Strict):
    source: str = Field(
        "sotu",
        description="'sotu' (the embedded State of the Union corpus), a .txt/.jsonl/.parquet file, a folder "
        "or glob of them, or 'hf:<dataset>[:<config>]' for a Hugging Face dataset.",
    )
    text_field: str = Field("text", description="Field holding the text in .jsonl, .parquet and hf sources.")
    hf_split: str = Field("train", description="Split to read from a Hugging Face dataset.")
    max_documents: Annotated[int, Field(ge=1)] | None = Field(
        None, description="Keep only the first documents (in source order)."
    )
    normalization: Literal["NFC", "NFKC"] = "NFKC"
    min_chars: Annotated[int, Field(ge=0)] = Field(200, description="Drop documents shorter than this.")
    val_fraction: Annotated[float, Field(gt=0, lt=0.5)] = Field(
        0.1, description="Share of documents held out for validation, chosen by document hash."
    )


class VocabSpec(_Strict):
    size: Annotated[int, Field(ge=260, le=65535)] = Field(4096, description="Byte-level BPE vocabulary size.")


class ExtraCell(_Strict):
    """One cell beyond the grid's product or IsoFLOP profiles (one per seed), such as `scalelaw
    suggest` proposes; it changes no other cell's id."""

    model_size: Annotated[int, Field(ge=1000, le=MAX_MODEL_PARAMS)] | ModelShape = Field(
        description="Target non-embedding parameter count, or an explicit shape."
    )
    tokens: Annotated[int, Field(ge=1)] = Field(description="Training tokens D.")


class GridSpec(_Strict):
    """The cells: the product of `model_sizes` and `tokens`, or IsoFLOP profiles, one per compute budget:
    `models_per_budget` consecutive ladder sizes around the expected optimum, each trained on the
    tokens that spend the budget (Chinchilla's Approach 2 design)."""

    model_sizes: list[Annotated[int, Field(ge=1000, le=MAX_MODEL_PARAMS)] | ModelShape] = Field(
        description="Model sizes N: target non-embedding parameter counts, or explicit shapes. With "
        "budgets: the ladder that each budget picks its sizes from.",
        min_length=1,
    )
    tokens: list[Annotated[int, Field(ge=1)]] | None = Field(
        None,
        description="Data sizes D: training tokens per cell (a product grid with model_sizes).",
        min_length=1,
    )
    budgets: list[Annotated[float, Field(gt=0)]] | None = Field(
        None,
        description="Compute budgets in FLOPs, counted as fit.compute_kind says (6·N·D by default): "
        "one IsoFLOP profile each, instead of grid.tokens.",
        min_length=1,
    )
    models_per_budget: Annotated[int, Field(ge=3)] = Field(
        5, description="With budgets: model sizes per budget, consecutive on the model_sizes ladder."
    )
    tokens_per_param: Annotated[float, Field(gt=0)] = Field(
        20.0,
        description="With budgets: the expected compute-optimal D/N (N as fit.params_kind counts it); "
        "each budget's sizes are centred on the size nearest this ratio.",
    )
    extra_cells: list[ExtraCell] = Field(
        [], description="Cells added to the grid's, e.g. those `scalelaw suggest` proposes."
    )
    seeds: list[int] = Field([0], min_length=1)
    allow_repeated_epochs: bool = Field(
        False, description="Allow D larger than the training split (the data then repeats)."
    )

    @model_validator(mode="after")
    def _tokens_or_budgets(self) -> GridSpec:
        if self.tokens is None and self.budgets is None:
            raise ValueError("give tokens (a product grid) or budgets (IsoFLOP profiles)")
        if self.tokens is not None and self.budgets is not None:
            raise ValueError("give tokens (a product grid) or budgets (IsoFLOP profiles), not both")
        if self.budgets is not None and self.models_per_budget > len(self.model_sizes):
            raise ValueError(
                f"models_per_budget {self.models_per_budget} exceeds the {len(self.model_sizes)} "
                "model_sizes it picks from; add sizes or lower it"
            )
        return self


class TrainSpec(_Strict):
    context: Annotated[int, Field(ge=8, le=8192)] = 128
    batch_size: Annotated[int, Field(ge=1)] = Field(32, description="Largest batch (sequences per step).")
    batch_size_by_size: dict[int, Annotated[int, Field(ge=1)]] = Field(
        {}, description="Largest batch for particular grid.model_sizes targets (N), overriding batch_size."
    )
    min_steps: Annotated[int, Field(ge=1)] = Field(
        50, description="Cells with little data use smaller batches so they take at least this many steps."
    )
    lr: Annotated[float, Field(gt=0, lt=1)] | Literal["rule"] = Field(
        "rule",
        description="Peak learning rate, or 'rule': 0.45·N^-0.36 for N non-embedding parameters "
        "(Porian et al. 2024's exponent, our constant; see tasks.cell.lr_for_size).",
    )
    lr_by_size: dict[int, Annotated[float, Field(gt=0)]] = Field(
        {}, description="Learning rate for particular grid.model_sizes targets (N), overriding lr."
    )
    warmup_tokens_per_param: Annotated[float, Field(ge=0)] = Field(
        1.0, description="Warm up for this many tokens per model parameter (Porian et al. 2024 use 1)."
    )
    warmup_fraction: Annotated[float, Field(ge=0, lt=1)] = Field(
        0.05, description="Warmup never takes more than this share of a cell's steps."
    )
    min_lr_ratio: Annotated[float, Field(ge=0, le=1)] = Field(
        0.1, description="The schedule (cosine, or the WSD cooldown) decays to lr * this."
    )
    schedule: Literal["cosine", "wsd"] = Field(
        "cosine",
        description="'cosine': warmup, then cosine decay over each cell's run. 'wsd': warmup-stable-decay "
        "(Hägele et al. 2024): for each N and seed one trunk holds the peak rate, and each D's cell "
        "branches from it for a 1-sqrt cooldown; the cells of one trunk share the batch and warmup of its "
        "smallest D.",
    )
    cooldown_fraction: Annotated[float, Field(gt=0, lt=1)] = Field(
        0.2, description="With schedule 'wsd': the share of each cell's steps spent in the cooldown."
    )
    weight_decay: Annotated[float, Field(ge=0)] = 0.1
    beta1: Annotated[float, Field(ge=0, lt=1)] = 0.9
    beta2: Annotated[float, Field(ge=0, lt=1)] = 0.95
    beta2_by_size: dict[int, Annotated[float, Field(ge=0, lt=1)]] = Field(
        {}, description="AdamW beta2 for particular grid.model_sizes targets (N), overriding beta2."
    )
    grad_clip: Annotated[float, Field(gt=0)] = 1.0
    tokens_per_step: Annotated[int, Field(ge=8)] | None = Field(
        None,
        description="Largest batch in tokens per optimizer step (a multiple of context), instead of "
        "batch_size sequences; the same on every device, micro_batch_size or not.",
    )
    micro_batch_size: Annotated[int, Field(ge=1)] | None = Field(
        None,
        description="Sequences per forward and backward pass, their gradients accumulated into one step "
        "when a whole batch does not fit in memory; null: the whole batch. Not part of a cell's identity.",
    )
    precision: Literal["fp32", "bf16", "auto-by-size"] = Field(
        "auto-by-size",
        description="'fp32'; 'bf16': bf16 autocast over fp32 weights and optimizer state; 'auto-by-size': "
        "bf16 from bf16_min_params non-embedding parameters up, fp32 below. Part of each cell's identity.",
    )
    bf16_min_params: Annotated[int, Field(ge=0)] | None = Field(
        2_000_000,
        description="With precision 'auto-by-size': train models of at least this many non-embedding "
        "parameters in bf16 (smaller ones gain nothing on a CPU); null: always fp32.",
    )
    device: Literal["auto", "cpu", "cuda", "mps"] = Field(
        "auto",
        description="Where cells train: 'auto' is CUDA when the worker has a GPU, else the CPU. One GPU "
        "per cell; not part of a cell's identity.",
    )
    compile: bool = Field(False, description="torch.compile the model (15-25 s per shape before it pays).")

    @property
    def largest_batch(self) -> int:
        """Sequences per step before small cells shrink it to keep min_steps."""
        return self.batch_size if self.tokens_per_step is None else self.tokens_per_step // self.context

    @model_validator(mode="before")
    @classmethod
    def _lr_is_a_rate_or_the_rule(cls, data: object) -> object:
        """One sentence for a bad lr, not one per member of its union type."""
        lr = data.get("lr", "rule") if isinstance(data, dict) else "rule"
        if lr != "rule" and not (type(lr) in (int, float) and 0 < lr < 1):
            raise ValueError(f"lr {lr!r} is neither a number between 0 and 1 nor 'rule'; give one of those")
        return data

    @model_validator(mode="after")
    def _whole_sequences_per_step(self) -> TrainSpec:
        if self.tokens_per_step is not None and self.tokens_per_step % self.context:
            raise ValueError(
                f"tokens_per_step {self.tokens_per_step} is not a multiple of context {self.context}; "
                f"give a multiple such as {max(1, self.tokens_per_step // self.context) * self.context}"
            )
        return self

    @model_validator(mode="after")
    def _wsd_warmup_ends_before_the_cooldown(self) -> TrainSpec:
        if self.schedule == "wsd" and self.warmup_fraction + self.cooldown_fraction > 1:
            raise ValueError(
                f"warmup_fraction {self.warmup_fraction} and cooldown_fraction {self.cooldown_fraction} "
                "add up to more than 1, so warmup would run into the cooldown; lower one of them"
            )
        return self


class EvalSpec(_Strict):
    val_tokens: Annotated[int, Field(ge=256)] = Field(
        65536, description="Held-out tokens scored per cell (fixed windows, the same for every cell)."
    )
    sample_prompt: str = "Fellow citizens"
    sample_tokens: Annotated[int, Field(ge=0, le=512)] = 24


class FitSpec(_Strict):
    params_kind: Literal["nonembedding", "total"] = Field(
        "nonembedding", description="Which N the laws use: without or with embedding parameters."
    )
    compute_kind: Literal["6nd", "with_attention"] = Field(
        "6nd", description="Which compute the C-laws use: 6·N·D, or with attention and unembedding terms."
    )
    bootstrap: Annotated[int, Field(ge=0, le=MAX_BOOTSTRAP)] = Field(
        200, description="Bootstrap resamples of the cells for intervals and the compute-optimal band."
    )
    target: Literal["nats", "bits_per_byte"] = Field(
        "nats",
        description="The loss the laws fit: held-out nats per token, or bits per byte of text, which "
        "does not depend on the tokenizer (so sweeps with different vocabularies compare).",
    )
    huber_delta: Annotated[float, Field(gt=0)] = Field(
        1e-3,
        description="The Chinchilla form's Huber threshold on log loss: Hoffmann et al.'s 1e-3, or about "
        "the cells' scatter (small sweeps scatter by about 1%, so 1e-2); .inf for least squares.",
    )
    holdout_fraction: Annotated[float, Field(ge=0, lt=1)] = Field(
        0.25,
        description="Product grids: share of the largest-compute cells held out to check extrapolation "
        "(IsoFLOP grids hold out their largest budget).",
    )


class ExecutionSpec(_Strict):
    store: str = Field(
        "scalelaw-store",
        description="Folder, or fsspec URL such as s3://bucket/prefix, that holds every artifact of every "
        "sweep; every worker must reach it. Credentials come from the environment, never the URL.",
    )
    engine: Literal["processes", "dask"] = Field(
        "processes",
        description="Where cells train: a local pool of worker processes, or a Dask cluster (prefect-dask).",
    )
    dask_address: str | None = Field(
        None, description="Scheduler of an existing Dask cluster (tcp://host:8786); unset: a local cluster."
    )
    workers: Annotated[int, Field(ge=1, le=256)] = Field(
        2, description="Cells trained at once, each in its own process."
    )
    threads_per_worker: Annotated[int, Field(ge=1, le=256)] = 1
    checkpoint_seconds: Annotated[float, Field(gt=0)] = Field(
        120.0, description="A training cell saves a checkpoint this often; a rerun continues from it."
    )


class SweepSpec(_Strict):
    """Everything that determines a sweep: data, vocabulary, grid, training, evaluation and fits."""

    name: str = Field("sweep", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    corpus: CorpusSpec = CorpusSpec()
    vocab: VocabSpec = VocabSpec()
    grid: GridSpec
    train: TrainSpec = TrainSpec()
    eval: EvalSpec = EvalSpec()
    fit: FitSpec = FitSpec()
    execution: ExecutionSpec = ExecutionSpec()

    @model_validator(mode="after")
    def _per_size_settings_name_grid_sizes(self) -> SweepSpec:
        sizes = {s for s in self.grid.model_sizes if isinstance(s, int)}
        for field in ("lr_by_size", "batch_size_by_size", "beta2_by_size"):
            unknown = set(getattr(self.train, field)) - sizes
            if unknown:
                raise ValueError(
                    f"train.{field} names sizes {sorted(unknown)} that are not in grid.model_sizes; "
                    "use the grid's target sizes as keys"
                )
        return self

    @model_validator(mode="after")
    def _grid_fits_context(self) -> SweepSpec:
        for tokens in [*(self.grid.tokens or []), *(cell.tokens for cell in self.grid.extra_cells)]:
            if tokens < self.train.context:
                raise ValueError(
                    f"grid.tokens value {tokens} is smaller than one context window "
                    f"({self.train.context}); raise it or lower train.context"
                )
        return self


PRESETS: dict[str, SweepSpec] = {
    "smoke": SweepSpec(
        name="smoke",
        corpus=CorpusSpec(max_documents=40),
        vocab=VocabSpec(size=512),
        grid=GridSpec(model_sizes=[3000, 8000, 20000], tokens=[8192, 24576, 65536]),
        train=TrainSpec(context=64, batch_size=16, min_steps=16, lr=5e-3),
        eval=EvalSpec(val_tokens=8192, sample_tokens=12),
        fit=FitSpec(bootstrap=0),
    ),
    # IsoFLOP profiles chosen by the pilots in docs/pilots.md: five budgets over 1.23 decades, six sizes
    # each, every cell within one epoch of the embedded corpus and at least 200 steps of 1,024 tokens.
    "default": SweepSpec(
        name="default",
        vocab=VocabSpec(size=1024),
        grid=GridSpec(
            model_sizes=[
                ModelShape(d_model, 2, n_heads=6 if d_model == 120 else 0)
                for d_model in (16, 24, 32, 40, 48, 64, 80, 96, 120, 160, 192)
            ],
            budgets=[1.3e11, 2.6e11, 5.3e11, 1.1e12, 2.2e12],
            models_per_budget=6,
            tokens_per_param=25,
        ),
        train=TrainSpec(context=128, batch_size=8, schedule="wsd", warmup_fraction=0.4, min_steps=200),
        # the cells share the windows, so the law hardly moves with fewer (docs/pilots.md, section 7)
        eval=EvalSpec(val_tokens=16384),
        fit=FitSpec(bootstrap=1000, huber_delta=1e-2),
    ),
    # A real-scale sweep for one GPU (README, "Training on GPUs"): IsoFLOP profiles at four budgets,
    # 1e17-2e18 FLOPs, six sizes each from a 20M-300M ladder (ratio 1.35), D 0.17-4.9B tokens, one
    # epoch of about 6M FineWeb-Edu documents; WSD, so each size trains one trunk for all its budgets.
    "gpu": SweepSpec(
        name="gpu",
        corpus=CorpusSpec(
            source="hf:HuggingFaceFW/fineweb-edu:sample-10BT", max_documents=6_000_000, val_fraction=0.01
        ),
        vocab=VocabSpec(size=32768),
        grid=GridSpec(
            model_sizes=[int(round(20_000_000 * 1.35**i, -5)) for i in range(10)],
            budgets=[1e17, 3e17, 1e18, 2e18],
            models_per_budget=6,
            tokens_per_param=20,
        ),
        train=TrainSpec(
            context=1024,
            tokens_per_step=2**19,
            micro_batch_size=32,
            min_steps=200,
            schedule="wsd",
            precision="bf16",
            device="cuda",
            compile=True,
        ),
        eval=EvalSpec(val_tokens=2**20),
        fit=FitSpec(bootstrap=1000),
        execution=ExecutionSpec(workers=1, checkpoint_seconds=600.0),
    ),
}


def load_spec(preset: str | None = None, spec_file: str | Path | None = None) -> SweepSpec:
    """The spec of a preset, or one read from a YAML file (preset 'default' when neither is given)."""
    if spec_file is not None:
        return spec_from_yaml(Path(spec_file))
    name = preset or "default"
    if name not in PRESETS:
        raise SpecError(f"preset: unknown preset {name!r}; choose one of {', '.join(PRESETS)}.")
    return PRESETS[name]


def spec_from_yaml(path: Path) -> SweepSpec:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SpecError(f"spec: file {path} does not exist; pass an existing YAML file.") from None
    except OSError as error:
        raise SpecError(f"spec: {path} cannot be read ({error.strerror}); pass a YAML file.") from None
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise SpecError(f"spec: {path} is not valid YAML ({one_line(error)}); fix its syntax.") from None
    if not isinstance(data, dict):
        raise SpecError(f"spec: {path} must hold a mapping of fields (name, corpus, grid, ...).")
    return validate_spec(data)


def validate_spec(data: dict) -> SweepSpec:
    try:
        return SweepSpec.model_validate(data)
    except ValidationError as error:
        raise SpecError(describe_validation_error(error)) from None
