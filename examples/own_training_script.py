"""mft inside your own training script: objective + collator + MFTTrainer, no recipe.

    python examples/own_training_script.py [--objective mlm_u] [--max-steps 1500]

Builds the retrieval task, a small Llama from scratch, and trains it with the chosen objective
through `MFTTrainer` (a transformers Trainer), then prints forward/backward exact match.
"""

import argparse

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from mft import MFTCollator, MFTConfig, MFTTrainer, QASet, build_objective
from mft.data import RetrievalTask, TokenizedDataset, build_word_tokenizer, row_texts


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--objective", default="mlm_u", help="ar, ar_reverse, mlm or mlm_u")
    parser.add_argument("--max-steps", type=int, default=1500)
    parser.add_argument("--output-dir", default="runs/own_script")
    args = parser.parse_args()

    data = RetrievalTask(num_pairs=200, seed=0).build()
    tokenizer = build_word_tokenizer([text for row in data.train + data.qa for text in row_texts(row)])
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
        intermediate_size=512, max_position_embeddings=32, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id))

    trainer = MFTTrainer(
        model=model,
        args=MFTConfig(output_dir=args.output_dir, max_steps=args.max_steps, per_device_train_batch_size=64,
                       learning_rate=1e-3, lr_scheduler_type="cosine", warmup_steps=min(100, args.max_steps // 10),
                       logging_steps=100, save_strategy="no", use_cpu=True, report_to="none"),
        train_dataset=TokenizedDataset.from_rows(tokenizer, data.train),
        data_collator=MFTCollator(build_objective(args.objective), tokenizer, seed=0),
        processing_class=tokenizer,
    )
    trainer.train()
    for direction, metrics in trainer.evaluate_qa(QASet(data.qa)).items():
        print(f"{direction}: exact match {metrics['exact_match']:.3f} (n={metrics['n']})")


if __name__ == "__main__":
    main()
