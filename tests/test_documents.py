"""Your own documents (issue 18): .txt/.md files and folders, completion-format questions, fact ids
and borrowed answers, the step-0 baseline, and the forgetting drift with its lever (replay)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mft.eval
import mft.train
from mft import cli
from mft.config import load_recipe
from mft.data.schema import load_data_files
from mft.data.tokenize import decode_answer, encode_prompt, encode_row, space_answers
from mft.errors import RecipeError
from mft.retention import RetentionSet, mean_nll

from test_config import error_line
from test_pretrained import tiny_pretrained

ROOT = Path(__file__).resolve().parents[1]


# -- documents as users keep them -----------------------------------------------------------------

def test_text_and_markdown_files_are_documents_or_paragraphs(tmp_path):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "a.md").write_text("# Alice\n\nAlice lives in Paris.\nShe paints.\n\n\n Bob lives in Rome. \n")
    (notes / "b.txt").write_text("Carol lives in Oslo.")
    (notes / ".hidden.txt").write_text("not a document")
    (notes / "rows.jsonl").write_text(json.dumps({"prompt": "Who lives in Lima?", "completion": "Dave"}) + "\n")

    whole = load_data_files(str(notes), None).train
    assert whole == [{"text": "# Alice\n\nAlice lives in Paris.\nShe paints.\n\n\n Bob lives in Rome."},
                     {"text": "Carol lives in Oslo."}, {"prompt": "Who lives in Lima?", "completion": "Dave"}]
    paragraphs = load_data_files(str(notes), None, split="paragraph").train
    assert [row.get("text") for row in paragraphs] == ["# Alice", "Alice lives in Paris.\nShe paints.",
                                                       "Bob lives in Rome.", "Carol lives in Oslo.", None]
    listed = load_data_files([str(notes / "b.txt"), str(notes / "rows.jsonl")], None).train
    assert listed == whole[1:]


def test_a_folder_without_documents_and_a_bad_qa_format_are_one_line(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "image.png").write_bytes(b"\x89PNG")
    with pytest.raises(RecipeError, match="holds no .jsonl, .json, .txt, .md files"):
        load_data_files(str(empty), None)
    train, qa = tmp_path / "doc.txt", tmp_path / "qa.jsonl"
    train.write_text("Alice lives in Paris.")
    qa.write_text(json.dumps({"question": "Alice lives in", "answer": "Paris", "direction": "forward",
                              "format": "prefix"}) + "\n")
    with pytest.raises(RecipeError, match=r"qa.jsonl line 1: 'format' is 'prefix'; use 'chat'"):
        load_data_files(str(train), str(qa))
    assert load_data_files(str(train), None).train == [{"text": "Alice lives in Paris."}]


# -- question formats, fact ids, borrowed answers ---------------------------------------------------

@pytest.fixture
def chat_tokenizer(tmp_path):
    """The tiny pretrained tokenizer with a chat template whose markers are tokens of their own."""
    from transformers import AutoTokenizer

    base = tiny_pretrained(tmp_path / "base")
    tokenizer = AutoTokenizer.from_pretrained(base)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<user>", "<assistant>"]})
    tokenizer.chat_template = ("{% for m in messages %}<user> {{ m['content'] }} {% endfor %}"
                               "{% if add_generation_prompt %}<assistant> {% endif %}")
    return tokenizer


def test_completion_questions_reach_the_model_without_the_chat_template(chat_tokenizer, monkeypatch):
    template_ids = set(chat_tokenizer.convert_tokens_to_ids(["<user>", "<assistant>"]))
    qa = [{"question": "alice is the capital of", "answer": "paris", "direction": "forward", "format": "completion"},
          {"question": "what is the capital of alice", "answer": "paris", "direction": "forward"}]
    seen = []
    monkeypatch.setattr(mft.eval, "generate", lambda model, tokenizer, prompts, *a, **k: seen.extend(prompts) or
                        [chat_tokenizer("paris rome", add_special_tokens=False)["input_ids"], []])
    results = mft.eval.evaluate_qa(torch.nn.Linear(1, 1), chat_tokenizer, qa, "causal")
    completion, chat = seen
    assert not template_ids & set(completion)
    assert completion == encode_prompt(chat_tokenizer, qa[0]["question"], chat=False)
    assert completion[-5:] == chat_tokenizer("alice is the capital of", add_special_tokens=False)["input_ids"]
    assert template_ids <= set(chat)  # a chat question does get the template
    # a continuation is right when it starts with the answer; a chat answer must equal it
    assert results["forward"]["exact_match_completion"] == 1.0
    assert results["forward"]["exact_match_chat"] == 0.0


def test_a_masked_question_begins_as_the_training_rows_of_its_format(chat_tokenizer, monkeypatch):
    """Masked decoding puts a training row's start tokens in front of a question: a completion probe
    reads as the text row it continues, a chat question as its prompt row. This tokenizer, like
    SmolLM2's, adds no BOS, so under `shift` and `keep_sink` a text row starts with two."""
    from mft.decoding import encode_question
    from mft.objectives import build_objective
    from mft.objectives.base import SpecialTokens

    chat_tokenizer.add_special_tokens({"mask_token": "<mask>"})
    objective = build_objective("mlm_u", shift=True, keep_sink=True, predict_prompt=False)
    objective.setup(SpecialTokens.from_tokenizer(chat_tokenizer), chat_tokenizer)
    rules = {"shift": True, "keep_sink": True}
    probe, question = "alice is the capital of", "what is the capital of alice"
    trained, _ = objective._ids_and_prompt_length(encode_row(chat_tokenizer, {"text": f"{probe} paris"}))
    asked = encode_question(chat_tokenizer, probe, False, "masked", **rules)
    start = chat_tokenizer.bos_token_id
    assert asked[:2] == [start, start] and asked[2:] == encode_prompt(chat_tokenizer, probe, chat=False)
    assert asked == trained.tolist()[:len(asked)]
    trained, prompt_length = objective._ids_and_prompt_length(
        encode_row(chat_tokenizer, {"prompt": question, "completion": "paris"}))
    assert encode_question(chat_tokenizer, question, True, "masked", **rules) == trained.tolist()[:prompt_length]
    # causal decoding, and a masked model trained without shift, read the context alone
    for decoding, shift, keep_sink in (("causal", True, True), ("masked", False, False)):
        assert encode_question(chat_tokenizer, probe, False, decoding, shift, keep_sink) == \
            encode_prompt(chat_tokenizer, probe, chat=False)
    # evaluation asks the model exactly that
    seen = []
    monkeypatch.setattr(mft.eval, "generate", lambda model, tokenizer, prompts, *a, **k: seen.extend(prompts) or
                        [[] for _ in prompts])
    qa = [{"question": probe, "answer": "paris", "direction": "forward", "format": "completion"}]
    mft.eval.evaluate_qa(torch.nn.Linear(1, 1), chat_tokenizer, qa, "masked", **rules)
    assert seen == [asked]


def test_completion_format_training_rows_are_trained_without_the_chat_template(chat_tokenizer, tmp_path):
    template_ids = set(chat_tokenizer.convert_tokens_to_ids(["<user>", "<assistant>"]))
    train = tmp_path / "train.jsonl"
    train.write_text(json.dumps({"prompt": "alice is the capital of", "completion": "paris", "format": "completion"})
                     + "\n" + json.dumps({"prompt": "what is the capital of alice", "completion": "paris"}) + "\n")
    rows = load_data_files(str(train), None).train
    assert rows[0]["format"] == "completion" and "format" not in rows[1]
    probe, chat = (encode_row(chat_tokenizer, row) for row in rows)
    # the completion row is the text a completion probe continues: the prompt as in evaluation, then
    # the answer after a space, as it would run on in a document
    assert not template_ids & set(probe["input_ids"])
    assert probe["input_ids"][:probe["prompt_length"]] == encode_prompt(chat_tokenizer, rows[0]["prompt"], chat=False)
    answer = probe["input_ids"][probe["prompt_length"]:-1]
    assert answer == chat_tokenizer(" paris", add_special_tokens=False)["input_ids"]
    assert template_ids <= set(chat["input_ids"][:chat["prompt_length"]])
    # answer_space is about chat answers only: a completion row already has its space
    spaced = space_answers(chat_tokenizer, rows, True)
    assert spaced[0] == rows[0] and spaced[1]["completion"] == " paris"
    train.write_text(json.dumps({"prompt": "alice is", "completion": "paris", "format": "text"}) + "\n")
    with pytest.raises(RecipeError, match="line 1: 'format' is 'text'"):
        load_data_files(str(train), None)


def bpe_chat_tokenizer(texts: list[str]):
    """A byte-level BPE tokenizer trained on `texts` (so, like SmolLM2's, it gives a word a different
    first token after a space) with a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["</s>", "<user>", "<assistant>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(texts, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>",
                                        additional_special_tokens=["<user>", "<assistant>"])
    tokenizer.chat_template = ("{% for m in messages %}<user>{{ m['content'] }}{% endfor %}"
                               "{% if add_generation_prompt %}<assistant>{% endif %}")
    return tokenizer


def test_answer_space_answers_in_the_tokens_of_the_documents(tmp_path, capsys):
    documents = ["Alice was born in Tarvmere.", "Bob was born in Askerwick. Alice paints."]
    base = tiny_pretrained(tmp_path / "base")
    tokenizer = bpe_chat_tokenizer([*documents, "Where was Alice born? Who was born in Tarvmere?"] * 20)
    tokenizer.save_pretrained(base)  # prepare reads the tokenizer and the config, never the weights
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(row) + "\n" for row in [
        *({"text": text} for text in documents), {"prompt": "Where was Alice born?", "completion": "Tarvmere"},
        {"prompt": "Who was born in Tarvmere?", "completion": "Alice"}]))
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]

    def examples(*extra):
        recipe = load_recipe(str(ROOT / "recipes" / "mistral_wiki.yaml"), [
            f"model.name_or_path={base}", f"data.train_file={train}", "data.qa_file=null",
            "training.eval_strategy=no", "training.use_cpu=true", "peft.method=full", *extra])
        _, _, _, dataset = mft.train.prepare(recipe)
        texts = [dataset[i]["input_ids"] for i in range(2)]
        answers = [dataset[i]["input_ids"][dataset[i]["prompt_length"]:-1] for i in range(2, 4)]
        return texts, answers

    texts, plain = examples()
    assert "answer_space" not in capsys.readouterr().out
    assert plain == [encode("Tarvmere"), encode("Alice")]
    texts_spaced, spaced = examples("data.answer_space=true")
    assert texts_spaced == texts  # text rows are untouched
    assert spaced == [encode(" Tarvmere"), encode(" Alice")] and spaced[0][0] != plain[0][0]
    occurs = lambda part: any(text[i:i + len(part)] == part for text in texts for i in range(len(text)))
    assert occurs(spaced[0]) and not occurs(plain[0])  # the town is only ever written after a space
    assert occurs(plain[1]) and occurs(spaced[1])  # the name also opens a document
    # auto: the town after a space, the name as written, because a document starts with it
    assert examples("data.answer_space=auto")[1] == [spaced[0], plain[1]]
    assert "data.answer_space = auto: 1 of 2 chat answers trained after a space" in capsys.readouterr().out
    # evaluation and mft.load(...).generate give a chat answer without the space, a completion with it
    assert decode_answer(tokenizer, spaced[0]) == "Tarvmere"
    assert decode_answer(tokenizer, spaced[0], chat=False) == " Tarvmere"


def test_fact_ids_and_borrowed_answers(monkeypatch):
    from mft.data.tokenize import build_word_tokenizer

    qa = [  # two facts, two wordings each, and one question without a fact id
        {"question": "q1a", "answer": "paris", "direction": "forward", "fact": "alice"},
        {"question": "q1b", "answer": "paris", "direction": "forward", "fact": "alice"},
        {"question": "q2a", "answer": "rome", "direction": "forward", "fact": "bob"},
        {"question": "q2b", "answer": "rome", "direction": "forward", "fact": "bob"},
        {"question": "q3", "answer": "lima", "direction": "backward"},
    ]
    said = ["paris", "paris", "rome", "paris", "oslo"]  # bob's second wording borrows alice's answer
    tokenizer = build_word_tokenizer(["paris rome lima oslo q1a q1b q2a q2b q3"])
    monkeypatch.setattr(mft.eval, "generate", lambda m, t, prompts, *a, **k:
                        [tokenizer(text, add_special_tokens=False)["input_ids"] for text in said])
    results = mft.eval.evaluate_qa(torch.nn.Linear(1, 1), tokenizer, qa, "causal", known_answers=("oslo",))
    forward, backward = results["forward"], results["backward"]
    assert forward["exact_match"] == 0.75  # the mean over wordings
    assert forward["facts_all_wordings"] == 0.5 and forward["n_facts"] == 2  # alice in every wording, bob not
    assert forward["borrowed"] == 1.0  # the one miss is another fact's answer
    assert backward["borrowed"] == 1.0  # "oslo" is a trained answer (known_answers)
    flat = mft.eval.flatten_metrics(results)
    assert "eval_forward_facts_all_wordings" in flat and "eval_forward_n_facts" not in flat


# -- baseline and forgetting ----------------------------------------------------------------------

def tiny_run(tmp_path, *extra):
    base = tiny_pretrained(tmp_path / "base")
    train, qa = tmp_path / "train.txt", tmp_path / "qa.jsonl"
    train.write_text("paris is the capital of alice\n\nrome is the capital of bob\n")
    qa.write_text("".join(json.dumps(row) + "\n" for row in [
        {"question": "what is the capital of alice", "answer": "paris", "direction": "backward", "fact": "a"},
        {"question": "alice is the capital of", "answer": "paris", "direction": "backward", "fact": "a",
         "format": "completion"}]))
    out = tmp_path / "out"
    code = mft.train.main([
        str(ROOT / "recipes" / "mistral_wiki.yaml"), f"model.name_or_path={base}", f"data.train_file={train}",
        "data.split=paragraph", f"data.qa_file={qa}", f"training.output_dir={out}", "training.use_cpu=true",
        "training.max_steps=4", "training.eval_steps=2", "training.logging_steps=1", "training.learning_rate=0.05",
        "training.per_device_train_batch_size=2", "training.gradient_accumulation_steps=1", "training.save_steps=2",
        "training.report_to=none", "training.disable_tqdm=true", "peft.method=full", *extra])
    return code, out


def test_a_run_reports_the_base_model_and_the_drift(tmp_path):
    code, out = tiny_run(tmp_path)
    assert code == 0
    results = json.loads((out / "eval_results.json").read_text())
    assert set(results) == {"backward", "baseline", "retention"}
    assert set(results["baseline"]) == {"backward", "retention"}
    assert results["baseline"]["retention"]["drift"] == pytest.approx(0.0, abs=1e-5)  # step 0: the base model
    retention = results["retention"]
    assert retention["drift"] == pytest.approx(retention["nll"] - retention["base_nll"])
    assert retention["drift"] > 0.01  # four steps at lr 0.05 moved the model away from its own text
    saved = RetentionSet.load(out)
    assert saved.base_nll == pytest.approx(retention["base_nll"]) and len(saved.measured) == 32
    state = json.loads((out / "trainer_state.json").read_text())
    logged = [entry["step"] for entry in state["log_history"] if "eval_retention_drift" in entry]
    assert logged[0] == 0 and logged[-1] == 4
    report = (out / "report.md").read_text()
    assert "step 0" in report and "## Forgetting" in report and "facts right in every wording" in report


def test_the_drift_is_the_nll_difference(tmp_path):
    """mean_nll against a hand computation on one item."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = tiny_pretrained(tmp_path / "base")
    model, tokenizer = AutoModelForCausalLM.from_pretrained(base), AutoTokenizer.from_pretrained(base)
    ids = tokenizer("paris is the capital of alice", add_special_tokens=False)["input_ids"]
    log_probs = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
    expected = -sum(log_probs[t - 1, ids[t]].item() for t in range(2, len(ids))) / (len(ids) - 2)
    assert mean_nll(model, tokenizer, [(ids, 2)]) == pytest.approx(expected, rel=1e-5)
    two = mean_nll(model, tokenizer, [(ids, 2), (ids[:4], 1)])  # padding of the shorter row is not scored
    single = [-log_probs[t - 1, ids[t]].item() for t in range(1, 4)]
    assert two == pytest.approx((expected * (len(ids) - 2) + sum(single)) / (len(ids) - 2 + 3), rel=1e-5)


def test_replay_adds_next_token_rows(tmp_path, capsys):
    code, out = tiny_run(tmp_path, "data.replay=1.0")
    assert code == 0
    printed = capsys.readouterr().out
    assert "replay: 2 next-token rows" in printed  # one per training example (two paragraphs)


def test_replay_and_retention_need_a_pretrained_model(tmp_path, capsys):
    train = tmp_path / "doc.txt"
    train.write_text("w1 w2 w3")
    raw = {"data": {"train_file": str(train), "replay": 0.5}, "objective": {"name": "mlm_u"},
           "training": {"output_dir": str(tmp_path / "out"), "eval_strategy": "no"}}
    recipe = tmp_path / "recipe.yaml"
    import yaml

    recipe.write_text(yaml.safe_dump(raw))
    line = error_line(capsys, [str(recipe)])
    assert "data.replay" in line and "model.name_or_path" in line


def test_mft_eval_answers_with_a_base_model(tmp_path, capsys):
    base = tiny_pretrained(tmp_path / "base")
    qa = tmp_path / "qa.jsonl"
    qa.write_text(json.dumps({"question": "alice is the capital of", "answer": "paris", "direction": "forward"})
                  + "\n")
    out = tmp_path / "base_eval.json"
    assert cli.main(["eval", "--model", str(base), "--qa", str(qa), "--format", "completion",
                     "--max-new-tokens", "2", "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results["forward"]["n"] == 1 and 0.0 <= results["forward"]["exact_match"] <= 1.0
    assert cli.main(["eval", "--qa", str(qa)]) == 2  # neither a run nor --model
    assert "give a run folder or --model" in capsys.readouterr().err


# -- the demo corpus --------------------------------------------------------------------------------

def test_the_committed_profiles_corpus_is_what_the_script_writes(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_corpus", ROOT / "examples" / "profiles" / "make_corpus.py")
    make_corpus = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_corpus)
    make_corpus.write_corpus(tmp_path)
    committed = ROOT / "examples" / "profiles"
    written = sorted(path.relative_to(tmp_path) for path in tmp_path.rglob("*") if path.is_file())
    assert len([path for path in written if path.suffix == ".md"]) == 24
    for relative in written:
        assert (committed / relative).read_text() == (tmp_path / relative).read_text(), relative


def test_the_corpus_script_rejects_a_bad_option_in_one_line_before_writing(tmp_path):
    script = ROOT / "examples" / "profiles" / "make_corpus.py"
    out = tmp_path / "corpus"
    done = subprocess.run([sys.executable, str(script), "--out", str(out), "--openers", "0", "--opener-facts"], capture_output=True,
                          text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().count("\n") == 0 and "task.openers > 0" in done.stderr
    assert not out.exists()


@pytest.mark.parametrize("recipe, passes, questions", [("profiles_ar", 1, 288), ("profiles_masked", 1, 288),
                                                       ("profiles_mlmu", 2, 144)])
def test_the_profiles_recipes_read_the_documents_folder(recipe, passes, questions):
    from mft.config import load_recipe
    from mft.data.profiles import DEMO_DOCUMENTS_PER_PERSON, DEMO_OPENERS, ProfilesTask

    data = mft.train.load_data(load_recipe(ROOT / "recipes" / f"{recipe}.yaml"))
    documents = [row for row in data.train if row.get("text", "").endswith(".")]
    # every file holds the demo's paragraphs, each a row of its own through data.split: paragraph; a
    # folder listed n times is read n times
    paragraphs = DEMO_DOCUMENTS_PER_PERSON * 24
    assert len(documents) == passes * paragraphs and all(row["text"].count(". ") >= 2 for row in documents)
    assert len(data.train) == passes * paragraphs + questions and len(data.qa) == 288
    task = ProfilesTask(openers=DEMO_OPENERS, documents_per_person=DEMO_DOCUMENTS_PER_PERSON)
    assert sorted(row["text"] for row in documents) == sorted(passes * [text for texts in task.documents().values()
                                                                        for text in texts])
    assert {row["format"] for row in data.qa} == {"chat", "completion"}
