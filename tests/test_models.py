from transformers import AutoModelForCausalLM, AutoTokenizer


def test_tiny_model_loads_and_generates_offline(tiny_model):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert (tiny_model / "model.safetensors").is_file()
    assert tokenizer.pad_token and tokenizer.eos_token and tokenizer.padding_side == "left"
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Which gene?"}], tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n")
    batch = tokenizer(["The answer is", "A patient presents with"], return_tensors="pt", padding=True)
    out = model.generate(**batch, max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    prompt_length = batch["input_ids"].shape[1]
    assert out.shape[0] == 2 and prompt_length < out.shape[1] <= prompt_length + 5
    for letter in "ABCDEFGHIJ":
        assert len(tokenizer.encode(letter, add_special_tokens=False)) == 1
