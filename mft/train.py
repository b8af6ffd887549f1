"""`python -m mft.train RECIPE.yaml [section.key=value ...]` (also under `accelerate launch`).

One run: read and check the recipe, build the data, tokenizer, model, objective and collator, train
with `MFTTrainer`, evaluate forward/backward QA, and leave in `training.output_dir`:

    the trained model and tokenizer, resolved_recipe.yaml, eval_results.json, report.md, accuracy.png

Every check of the recipe and the data runs before the model is built; a problem exits with
status 2 and one line on stderr that names the field and the fix. The heavy libraries (transformers,
and through it peft and bitsandbytes: ~4 s) are imported inside the functions that build things,
so that a bad recipe is reported before they load (BENCHMARKS.md: time to the error line).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

from .config import Recipe, load_recipe
from .data import TaskData, load_data_files
from .errors import MFTError, RecipeError, unforeseen_error_line
from .objectives import SpecialTokens
from .run_folder import (OutputFolderLock, RunIdentity, check_checkpoint_readable, check_fresh_start, check_resume,
                         checkpoints)

USAGE = "usage: python -m mft.train RECIPE.yaml [section.key=value ...]   e.g. training.max_steps=100"


def load_data(recipe: Recipe) -> TaskData:
    """The recipe's training rows and QA rows (a built-in task's, or read and checked from files)."""
    if recipe.task_name:
        return recipe.build_task().build()
    data = recipe.data
    return load_data_files(data.train_file, data.qa_file, data.train_dataset, data.train_split, split=data.split,
                           qa_format=data.qa_format)


def prepare(recipe: Recipe, data: TaskData | None = None, resume_from: str | None = None):
    """Everything that can fail on bad input, before any model exists: data, objective, tokenizer,
    examples. Returns (data, tokenizer, objective, train_dataset). A from-scratch model resuming from
    `resume_from` takes the tokenizer saved in that checkpoint (its vocabulary is the trained one).
    Text rows longer than the row limit (`row_limits`) are cut into windows (`mft.data.windows`);
    a prompt/completion row longer than it is refused."""
    from transformers import AutoTokenizer

    from .data.tokenize import build_word_tokenizer, is_chat_row, row_texts, space_answers
    from .data.windows import windowed_dataset, windowing_note
    from .models import load_tokenizer
    from .models.loading import ensure_pad_token

    data = load_data(recipe) if data is None else data
    if not data.train:
        raise RecipeError("the training set is empty; check the task sizes or data.train_file")
    if recipe.training.eval_strategy != "no" and not data.qa:
        raise RecipeError("training.eval_strategy asks for evaluation but there are no QA rows; add data.qa_file "
                          "or set training.eval_strategy=no")
    pretrained = bool(recipe.model.name_or_path)
    objective = recipe.build_objective()
    if pretrained:
        tokenizer = load_tokenizer(recipe.model)
        note = ensure_pad_token(tokenizer)
        if note:
            print(f"mft: {note}", flush=True)
    elif resume_from:
        tokenizer = AutoTokenizer.from_pretrained(resume_from)
    else:
        texts = [text for row in data.train + data.qa for text in row_texts(row)] + objective.vocabulary_texts()
        tokenizer = build_word_tokenizer(texts, add_bos_token=recipe.model.add_bos_token)
    limits = row_limits(recipe, tokenizer)
    has_text = any("text" in row for row in data.train)
    windowing = text_windowing(recipe, tokenizer, limits) if limits and has_text else None
    rows = data.train
    if recipe.data is not None and recipe.data.answer_space:
        rows = space_answers(tokenizer, data.train, recipe.data.answer_space)
        spaced = sum(new is not old for new, old in zip(rows, data.train))
        answers = sum("completion" in row and is_chat_row(row) for row in rows)
        print(f"mft: data.answer_space = {recipe.data.answer_space}: {spaced} of {answers} chat answers trained "
              f"after a space", flush=True)
    train_dataset = windowed_dataset(tokenizer, rows, windowing)
    note = windowing_note(train_dataset, recipe.objective_name)
    if note:
        print(f"mft: {note}", flush=True)
    # Windows fit by construction; what is left to check are the rows that are never cut (prompt/completion).
    longest, index = longest_row(recipe.build_objective(), tokenizer, train_dataset, with_index=True)
    for limit, field, fix in limits:
        if longest > limit:
            row = data.train[train_dataset.origins[index][0]]
            prompt = row.get("prompt", "")
            what = (f"a prompt/completion row, which is not split into windows: prompt "
                    f"{prompt[:40] + ('...' if len(prompt) > 40 else '')!r}" if "prompt" in row else "a text window")
            raise RecipeError(f"{field} = {limit} is shorter than the longest training row ({longest} tokens), "
                              f"training row {train_dataset.origins[index][0] + 1} ({what}); {fix}")
    return data, tokenizer, objective, train_dataset


def row_limits(recipe: Recipe, tokenizer) -> list[tuple[int, str, str]]:
    """The limits on the length of a row the objective builds, as (tokens, what sets it, the fix):
    training.pack_length when packing, the model's context, data.max_length when set. Text rows
    are cut into windows that fit the smallest (`mft.data.windows`)."""
    limits = []
    if recipe.training.pack_length:
        limits.append((recipe.training.pack_length, "training.pack_length", "raise it or shorten that row"))
    if not recipe.model.name_or_path:
        limits.append((recipe.model.max_position_embeddings, "model.max_position_embeddings",
                       "raise it or shorten that row"))
    else:
        context = pretrained_context(recipe, tokenizer)
        if context:
            limits.append((context, f"the context of {recipe.model.name_or_path}", "shorten that row"))
    if recipe.data is not None and recipe.data.max_length:
        limits.append((recipe.data.max_length, "data.max_length", "raise it or shorten that row"))
    return limits


def pretrained_context(recipe: Recipe, tokenizer) -> int | None:
    """A pretrained model's context length: its config's max_position_embeddings (n_positions for
    GPT-2), read from the folder `load_tokenizer` already resolved; else the tokenizer's
    model_max_length when it is a real length (unset ones are ~1e30); else None (no limit)."""
    from transformers import AutoConfig

    from .models.loading import hub_options, resolve_model_source

    source, gguf_file = resolve_model_source(recipe.model.name_or_path, recipe.model.gguf_file)
    context = None
    if gguf_file is None:  # reading a GGUF file's config means parsing the file: use the tokenizer's length
        try:
            config = AutoConfig.from_pretrained(source, trust_remote_code=recipe.model.trust_remote_code,
                                                **hub_options(source))
            context = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
        except (OSError, ValueError):  # an adapter folder, an unknown model type: fall back
            context = None
    if not context:
        length = getattr(tokenizer, "model_max_length", None)
        context = length if isinstance(length, int) and 0 < length < 1_000_000 else None
    return context


def text_windowing(recipe: Recipe, tokenizer, limits: list[tuple[int, str, str]]):
    """How text rows are cut (`mft.data.windows.Windowing`): windows of the most content tokens w
    whose rows, as the objective builds them, fit the smallest limit."""
    from .data.windows import Windowing, synthetic_text_example, window_length

    limit, source, _ = min(limits, key=lambda item: item[0])
    measure = text_row_length(recipe.build_objective(), tokenizer)
    length = window_length(limit, lambda n: measure(synthetic_text_example(tokenizer, n)))
    if length < 1:
        shortest = measure(synthetic_text_example(tokenizer, 1))
        raise RecipeError(f"{source} = {limit} leaves no room for text: {recipe.objective_name} builds a row of "
                          f"{shortest} tokens from a one-token text; raise it")
    overlap = recipe.data.window_overlap if recipe.data is not None else 0
    return Windowing(length, overlap, limit, source, measure)


def text_row_length(objective, tokenizer):
    """A function: example -> the longest row `objective` builds from that text example, over every
    component that trains text rows (a mixture's components, or the one its route gives text rows)
    and a few draws. Row lengths depend on the example's length (and entity spans), not on the draw,
    for every objective today; the draws guard one whose would."""
    from .collator import MFTCollator
    from .objectives import example_generator

    MFTCollator(objective, tokenizer, special=measuring_special_tokens(tokenizer))  # sets the objective up
    components = objective.components
    if getattr(objective, "route", None) is not None:
        components = (components[objective.component_names.index(objective.route["text"])],)

    def length(example: dict[str, Any]) -> int:
        return max(len(row) for component in components for draw in range(3)
                   for row in component(example, example_generator(0, 0, draw)))
    return length


def measuring_special_tokens(tokenizer) -> SpecialTokens:
    """The tokenizer's special tokens for measuring rows before the model exists: a pretrained
    tokenizer gets its mask token only with the model (`load_model`), and lengths do not depend on
    its id, so EOS stands in for it."""
    special = SpecialTokens.from_tokenizer(tokenizer)
    if special.mask_token_id is None:
        special = dataclasses.replace(special, mask_token_id=tokenizer.eos_token_id)
    return special


def longest_row(objective, tokenizer, dataset, with_index: bool = False):
    """The length of the longest row the objective makes from the longest example (rows can be
    longer than examples: masked_reconstruct shows a masked copy first); with `with_index`, also
    that example's index. Prompt/completion examples and text windows are measured apart (their
    rows grow differently with their length), and the longer row is kept."""
    from .collator import MFTCollator

    collator = MFTCollator(objective, tokenizer, special=measuring_special_tokens(tokenizer))
    best = (0, 0)
    for prompted in (True, False):
        indices = [i for i, example in enumerate(dataset.examples) if (example.get("prompt_length", 0) > 0) == prompted]
        if indices:
            index = max(indices, key=lambda i: len(dataset.examples[i]["input_ids"]))
            best = max(best, (max(len(row) for row in collator.rows(dataset.examples[index])), index))
    return best if with_index else best[0]


def data_name(recipe: Recipe) -> str:
    """What the run trains on, for messages and titles: the task, or the data's file or folder names."""
    if recipe.task_name:
        return recipe.task_name
    sources = recipe.data.train_file if isinstance(recipe.data.train_file, list) else [recipe.data.train_file]
    return ", ".join(Path(source).name for source in sources if source) or str(recipe.data.train_dataset)


def run_train_loss(log_history: list[dict[str, Any]]) -> str:
    """The mean training loss of the whole run, from the losses logged every `logging_steps` (each
    the mean of the steps since the one before), weighted by the steps each covers; unlike the
    Trainer's `train_loss`, it also covers the steps before a resume."""
    total, steps, last_step = 0.0, 0, 0
    for entry in log_history:
        if "loss" in entry and "step" in entry:
            total += entry["loss"] * (entry["step"] - last_step)
            steps += entry["step"] - last_step
            last_step = entry["step"]
    return f"{total / steps:.4f}" if steps else "n/a"


def finished_run_results(checkpoint: str, output_dir: Path) -> dict[str, Any] | None:
    """The saved results when `checkpoint` is the end of a run that finished (its step reached the
    run's max_steps and the final model is saved): a resume then has nothing to do, and says so."""
    state_file = Path(checkpoint) / "trainer_state.json"
    state = json.loads(state_file.read_text()) if state_file.is_file() else {}
    done = state.get("max_steps") and state.get("global_step", 0) >= state["max_steps"]
    saved = any((output_dir / name).is_file() for name in ("model.safetensors", "model.safetensors.index.json",
                                                           "pytorch_model.bin", "adapter_model.safetensors"))
    if not (done and saved):
        return None
    results_file = output_dir / "eval_results.json"
    print(f"mft: {output_dir} is a finished run of this recipe (step {state['global_step']} of {state['max_steps']}); "
          f"nothing to do (training.overwrite_output_dir=true trains it again). Its results: "
          f"{results_file if results_file.is_file() else 'none saved'}", flush=True)
    return json.loads(results_file.read_text()) if results_file.is_file() else {}


def checkpoint_to_resume(args) -> str | None:
    """`resume_from_checkpoint`: a folder as given; `true`: the last complete checkpoint-N in the
    output folder (checkpoints are renamed into place only once written, see `mft.trainer`), or
    None (a fresh start) when there is none yet."""
    resume = args.resume_from_checkpoint
    if resume is not True:
        return resume or None
    complete = checkpoints(args.output_dir)
    last = str(complete[-1]) if complete else None
    print(f"mft: resuming from {last}" if last else f"mft: no checkpoint in {args.output_dir} yet; starting fresh",
          flush=True)
    return last


def load_model(recipe: Recipe, tokenizer, objective):
    """The model, with a mask token when the objective needs one, wrapped for full/LoRA/QLoRA."""
    import torch

    from .models import build_model
    from .models.loading import ensure_mask_token, load_pretrained
    from .models.peft import apply_peft, quantization_config

    if not recipe.model.name_or_path:
        model = build_model(recipe.model, tokenizer)
        return apply_peft(model, recipe.peft, activation_checkpointing=recipe.training.activation_checkpointing)
    compute_dtype = torch.bfloat16 if recipe.training.bf16 else torch.float16 if recipe.training.fp16 else torch.float32
    quantization = quantization_config(recipe.peft, compute_dtype)
    model, _ = load_pretrained(
        recipe.model.name_or_path, gguf_file=recipe.model.gguf_file, dtype=recipe.model.dtype,
        attn_implementation=recipe.model.attn_implementation, trust_remote_code=recipe.model.trust_remote_code,
        quantization_config=quantization, device_map="cpu" if quantization and recipe.training.use_cpu else None)
    trainable_tokens = None
    if objective.needs_mask_token:
        had_mask_token = tokenizer.mask_token is not None
        print(f"mft: {ensure_mask_token(tokenizer, model)}", flush=True)
        if not had_mask_token:  # a reserved or new token: its embedding row must learn what a mask is
            trainable_tokens = [tokenizer.mask_token_id]
    model = apply_peft(model, recipe.peft, trainable_token_ids=trainable_tokens,
                       activation_checkpointing=recipe.training.activation_checkpointing)
    if recipe.peft.method != "full":  # the adapter names the base as the recipe did, not a local cache path
        model.peft_config["default"].base_model_name_or_path = recipe.model.name_or_path
    return model


def retention_set(recipe: Recipe, model, tokenizer, output_dir: Path, lead: bool, resume_from: str | None):
    """The run's `mft.retention.RetentionSet`: read back when resuming, else made by the base model
    (before any step) and written to the run folder."""
    from .retention import RetentionSet, build_retention_set

    if resume_from:
        saved = RetentionSet.load(output_dir)
        if saved is not None:
            return saved
    texts = None
    if recipe.data and recipe.data.retention_file:
        from .data.schema import read_train_rows

        texts = [row["text"] for _, row in read_train_rows(recipe.data.retention_file) if row.get("text")]
    retention = build_retention_set(model, tokenizer, texts, recipe.training.per_device_eval_batch_size)
    if lead:
        retention.save(output_dir)
    print(f"mft: retention set: {retention.source}; base model NLL {retention.base_nll:.3f} nats/token", flush=True)
    return retention


def with_replay(train_dataset, tokenizer, retention, fraction: float):
    """The training examples plus round(fraction x examples) replay examples, trained as next-token
    rows whatever the objective (`next_token`, see `mft.collator`)."""
    from .data.tokenize import TokenizedDataset, encode_row
    from .retention import replay_rows

    rows = replay_rows(retention, fraction, len(train_dataset))
    replay = [{**encode_row(tokenizer, {"text": row["text"]}), "next_token": True} for row in rows]
    print(f"mft: replay: {len(replay)} next-token rows of the base model's text mixed into "
          f"{len(train_dataset)} training examples", flush=True)
    combined = TokenizedDataset(train_dataset.examples + replay,
                                train_dataset.origins + [(-1, index) for index in range(len(replay))])  # -1: replay
    combined.windowing = train_dataset.windowing
    return combined


def run(recipe: Recipe) -> dict[str, Any]:
    """Train and evaluate the recipe's run, holding its output folder (see `mft.run_folder`)."""
    lead = int(os.environ.get("RANK", "0")) == 0  # one process per run owns the folder
    with OutputFolderLock(recipe.training.output_dir) if lead else contextlib.nullcontext() as lock:
        if lead and lock.note:
            print(f"mft: {lock.note}", flush=True)
        return _run(recipe, lead)


def _run(recipe: Recipe, lead: bool) -> dict[str, Any]:
    from transformers import set_seed

    from .collator import MFTCollator
    from .eval import TRAINED_ANSWERS_FILE, baseline_results, direction_results, flatten_metrics, write_report
    from .models import count_parameters
    from .decoding import DecodingSpec
    from .trainer import MFTTrainer, QASet

    args = recipe.training
    output_dir = Path(args.output_dir)
    stage("preparing the data")
    data = load_data(recipe)
    identity = RunIdentity.of(recipe.resolved(), data.train)
    resume_from = checkpoint_to_resume(args)
    if resume_from:
        check_checkpoint_readable(resume_from)
        check_resume(identity, resume_from)
        finished = finished_run_results(resume_from, output_dir)
        if finished is not None:
            return finished
    else:
        existing = checkpoints(output_dir)
        if existing and not args.overwrite_output_dir and identity.owns(existing[-1]):
            finished = finished_run_results(str(existing[-1]), output_dir)  # the same run, run again
            if finished is not None:
                return finished
        replaced = check_fresh_start(identity, output_dir, args.overwrite_output_dir)
    data, tokenizer, objective, train_dataset = prepare(recipe, data, resume_from)
    if lead:
        for old in [] if resume_from else replaced:
            shutil.rmtree(old)
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "resolved_recipe.yaml").write_text(recipe.to_yaml())
        identity.write(output_dir)

    set_seed(args.seed)
    args.device  # sets up the process group now: ZeRO-3 partitions the model as it is built, across all ranks
    if args.deepspeed_plugin is not None and args.world_size > 1:
        import deepspeed  # on CPU accelerate sets up torch.distributed only; ZeRO-3 asks deepspeed.comm

        deepspeed.init_distributed(dist_backend="gloo" if args.use_cpu else None)
    stage("loading the model")
    model = load_model(recipe, tokenizer, objective)
    collator = MFTCollator(objective, tokenizer, seed=args.seed, pack_length=args.pack_length,
                           attention={"flex_attention": "rule", "flash_attention_2": "flash"}.get(
                               recipe.model.attn_implementation, "dense"))
    trainable, total = count_parameters(model)
    print(f"mft: {recipe.objective_name} on {data_name(recipe)}: "
          f"{len(train_dataset)} training examples, {len(data.qa)} QA items; "
          f"trainable parameters {trainable:,} of {total:,} ({recipe.peft.method}); "
          f"{args.world_size} process{'es' if args.world_size > 1 else ''}", flush=True)

    retention = None
    if recipe.model.name_or_path and (data.qa or recipe.data and recipe.data.replay):
        stage("measuring the base model's retention set")
        retention = retention_set(recipe, model, tokenizer, output_dir, lead, resume_from)
        if recipe.data and recipe.data.replay:
            train_dataset = with_replay(train_dataset, tokenizer, retention, recipe.data.replay)
    known_answers = tuple(dict.fromkeys(row["completion"] for row in data.train if "completion" in row))
    if lead:  # `mft eval` counts borrowed answers against the same trained answers
        (output_dir / TRAINED_ANSWERS_FILE).write_text(json.dumps(list(known_answers)) + "\n")
    qa = QASet(data.qa, known_answers=known_answers, retention=retention)
    if args.eval_on_start is None:  # the baseline: the untouched model, once per run
        args.eval_on_start = bool(qa) and not resume_from
    elif resume_from:
        args.eval_on_start = False  # the baseline is in the checkpoint's log history
    push, hub_token = args.push_to_hub, args.hub_token
    args.push_to_hub = False  # the Trainer neither creates the repo nor pushes: mft pushes once, at the end
    args.hub_token = None     # and the token is never pickled into training_args.bin
    trainer = MFTTrainer(model=model, args=args, train_dataset=train_dataset, eval_dataset=qa or None,
                         data_collator=collator, processing_class=tokenizer, run_identity=identity)
    trainer.decoding_spec = DecodingSpec.of(collator.objective, tokenizer, args.decoding, args.max_new_tokens,
                                            system_prompt=recipe.model.system_prompt)
    stage("training")
    trainer.train(resume_from_checkpoint=resume_from)
    train_seconds = trainer.train_seconds  # the whole run's, also after a resume
    trainer.save_model()
    trainer.save_state()  # trainer_state.json: the whole log history, also when no checkpoint was kept

    stage("evaluating")
    results, predictions = {}, []
    if qa:
        results = trainer.evaluate_qa(qa, predictions)
        baseline = baseline_results(trainer.state.log_history)
        if baseline:
            results["baseline"] = baseline
        final_metrics = flatten_metrics(results)
        logged_now = any(entry.get("step") == trainer.state.global_step and final_metrics.keys() <= entry.keys()
                         for entry in trainer.state.log_history)
        if not logged_now:  # the last step was not an eval step: record the final figures too
            trainer.log(final_metrics)
    stage("writing the report")
    if trainer.is_world_process_zero():
        title = f"{recipe.objective_name} on {data_name(recipe)}"
        details = {"objective": recipe.objective_name, "decoding": trainer.decoding,
                   "model": recipe.model.name_or_path or f"{recipe.model.architecture} from scratch",
                   "fine-tuning": recipe.peft.method, "steps": trainer.state.global_step,
                   "train seconds": f"{train_seconds:.0f}", "train loss": run_train_loss(trainer.state.log_history),
                   "trainable parameters": f"{trainable:,}"}
        write_report(output_dir, results, trainer.state.log_history, title, details, predictions if qa else None)
        summary = ", ".join(f"{d} {m['exact_match']:.3f} (n={m['n']})" for d, m in direction_results(results).items())
        if "retention" in results:
            summary += f"; drift {results['retention']['drift']:+.3f} nats/token"
        print(f"mft: done in {train_seconds:.0f} s; exact match: {summary or 'no QA set'}; "
              f"results in {output_dir}", flush=True)
        if push:
            from .hub import push_run

            stage("pushing to the Hub")
            url = push_run(output_dir, args.hub_model_id, token=hub_token, private=bool(args.hub_private_repo))
            print(f"mft: pushed {output_dir} to {url}", flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    """Exit status 0: done; 2: a problem with the user's input (`MFTError`, one line); 1: a failure
    nobody foresaw, reported in one line that names the stage, with the traceback in a file."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    recipe = None
    try:
        with stage("reading the recipe"):
            recipe = load_recipe(argv[0], argv[1:])
        run(recipe)
    except MFTError as error:
        print(f"mft: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        resume = [arg for arg in argv[1:] if not arg.startswith("training.resume_from_checkpoint=")]
        command = shlex.join(["python", "-m", "mft.train", argv[0], *resume, "training.resume_from_checkpoint=true"])
        print(f"mft: interrupted while {stage.current}; the last complete checkpoint is kept; resume with: {command}",
              file=sys.stderr)
        return 130
    except Exception as error:  # a bug or an environment failure: one line here, the traceback in a file
        output_dir = Path(recipe.training.output_dir) if recipe is not None else None
        print(unforeseen_error_line(error, stage.current, output_dir), file=sys.stderr)
        return 1
    return 0


class _Stage:
    """What the run is doing (`with stage("loading the model"): ...`), for the one-line report of an
    unforeseen failure."""

    current = "starting"

    def __call__(self, name: str):
        self.current = name
        return self

    def __enter__(self):
        return self

    def __exit__(self, kind, *rest):
        return False  # the name stays set when the block fails, so the report can say where


stage = _Stage()



if __name__ == "__main__":
    sys.exit(main())
