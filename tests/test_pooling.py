"""train.pooling: the classifier reads the mean of the text's tokens where the encoder was trained that way."""
import copy
import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import RobertaConfig

from transfer import modeling, pooling, strategies
from transfer.export import onnx_model
from transfer.schema import UserError
from tests.conftest import default_params, metrics, run_pipeline, tiny_params, toy_texts

NAMES = ["negative", "positive"]


@pytest.fixture(scope="module")
def sentence_bert(tiny_bert, tmp_path_factory):
    """The tiny BERT with sentence-transformers' record of mean pooling beside it, as all-MiniLM-L6-v2 ships."""
    folder = tmp_path_factory.mktemp("sentence-bert") / "model"
    shutil.copytree(tiny_bert, folder)
    (folder / "1_Pooling").mkdir()
    (folder / pooling.SENTENCE_POOLING_FILE).write_text(json.dumps(
        {"pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True}))
    return folder


def classifier(folder, setting):
    torch.manual_seed(0)
    return modeling.load_classifier(str(folder), NAMES, pooling=setting).eval()


def padded_batch(tiny_bert):
    texts = ["good fun", "the movie was a dull and boring story but the actor was fine"]
    return modeling.load_tokenizer(str(tiny_bert))(texts, padding=True, return_tensors="pt")


def test_mean_pooling_averages_the_text_tokens_and_leaves_padding_out(tiny_bert):
    model = pooling.apply(classifier(tiny_bert, "cls"), "mean")
    inputs = padded_batch(tiny_bert)
    assert inputs["attention_mask"][0].sum() < inputs["attention_mask"].shape[1], "the short text is padded"
    with torch.no_grad():
        hidden = model.bert(**inputs).last_hidden_state
        logits = model(**inputs).logits
        alone = model(**{key: value[:1, :int(inputs["attention_mask"][0].sum())] for key, value in inputs.items()})
    mask = inputs["attention_mask"].unsqueeze(-1).float()
    expected = model.classifier((hidden * mask).sum(1) / mask.sum(1))
    assert torch.allclose(logits, expected, atol=1e-6)
    assert torch.allclose(alone.logits[0], logits[0], atol=1e-5), "padding changes nothing"
    assert not torch.allclose(expected, model.classifier(hidden.mean(1)), atol=1e-4), "the mask takes part"
    twin = copy.deepcopy(model)  # a copy pools with the mask of its own call
    with torch.no_grad():
        assert torch.allclose(twin(**inputs).logits, logits, atol=1e-6)


def test_auto_pools_mean_only_where_the_encoder_was_trained_for_it(tiny_bert, sentence_bert):
    assert pooling.source_pooling(sentence_bert) == "mean"
    assert pooling.source_pooling(tiny_bert) is None
    recorded = sentence_bert.parent / "pretrained"  # what pretrain writes: the source's pooling in the config
    encoder = modeling.load_encoder(str(sentence_bert))
    encoder.config.update({pooling.SOURCE_KEY: pooling.source_pooling(sentence_bert)})
    modeling.save(encoder, modeling.load_tokenizer(str(sentence_bert)), recorded)
    assert isinstance(classifier(recorded, "auto").bert.pooler, pooling.MeanPooler)
    assert isinstance(classifier(sentence_bert, "auto").bert.pooler, pooling.MeanPooler), "the folder says it"
    assert not isinstance(classifier(tiny_bert, "auto").bert.pooler, pooling.MeanPooler)
    assert not isinstance(classifier(recorded, "cls").bert.pooler, pooling.MeanPooler), "cls is obeyed"
    assert isinstance(classifier(tiny_bert, "mean").bert.pooler, pooling.MeanPooler), "mean is obeyed"


def test_mean_on_a_model_whose_head_pools_by_itself_is_refused_from_its_config():
    params = default_params()
    config = RobertaConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64)
    with pytest.raises(UserError, match="train.pooling is mean.*Set train.pooling to cls or auto"):
        pooling.check("mean", config, params)
    pooling.check("auto", config, params)  # auto never refuses: it picks cls there
    pooling.check("cls", config, params)


def test_a_mean_pooled_classifier_saves_loads_and_exports_with_the_same_logits(tiny_bert, tmp_path):
    model = classifier(tiny_bert, "mean")
    torch.nn.init.normal_(model.classifier.weight, std=1.0)  # clear logits, as after training
    inputs = padded_batch(tiny_bert)
    with torch.no_grad():
        expected = model(**inputs).logits
    tokenizer = modeling.load_tokenizer(str(tiny_bert))
    modeling.save(model, tokenizer, tmp_path / "saved")
    assert not [key for key in load_file(tmp_path / "saved/model.safetensors") if "pooler" in key]
    loaded = modeling.load_saved_classifier(tmp_path / "saved").eval()
    assert isinstance(loaded.bert.pooler, pooling.MeanPooler)
    with torch.no_grad():
        assert torch.allclose(loaded(**inputs).logits, expected, atol=1e-5)
    path = onnx_model.export_onnx(tmp_path / "saved", tmp_path / "onnx")  # optimum would pool the first token
    got = onnx_model.onnx_logits(onnx_model.onnx_session(path), {k: v.numpy() for k, v in inputs.items()})
    assert np.allclose(got, expected.numpy(), atol=1e-4)


def test_a_saved_cls_model_missing_a_weight_is_refused(tiny_bert, tmp_path):
    model = classifier(tiny_bert, "cls")
    state = {k: v for k, v in model.state_dict().items() if "pooler" not in k}
    model.save_pretrained(tmp_path, state_dict=state, safe_serialization=True)
    with pytest.raises(UserError, match="lacks weights it needs.*pooler"):
        modeling.load_saved_classifier(tmp_path)


@pytest.mark.parametrize("strategy", ["lora", "prefix", "adapter", "frozen"])
def test_strategies_train_on_mean_pooled_features_and_round_trip(tiny_bert, tmp_path, strategy):
    params = default_params()
    model = strategies.prepare(strategy, classifier(tiny_bert, "mean"), params).model
    toy = toy_texts(16)
    inputs = modeling.load_tokenizer(str(tiny_bert))(toy["review"].tolist(), padding=True, return_tensors="pt")
    labels = torch.tensor([NAMES.index(label) for label in toy["sentiment"]])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(15):
        model.eval()  # no dropout: the loss itself must fall
        loss = model(**inputs, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    with torch.no_grad():
        expected = model(**inputs).logits
    strategies.save_adapted(model, strategy, modeling.load_tokenizer(str(tiny_bert)), tmp_path / "peft")
    rebuilt = strategies.load_adapted(tmp_path / "peft", tiny_bert)
    assert any(isinstance(module, pooling.MeanPooler) for module in rebuilt.modules())
    with torch.no_grad():
        assert torch.allclose(rebuilt(**inputs).logits, expected, atol=1e-4, rtol=1e-4)


def test_the_pipeline_pools_a_sentence_encoder_by_its_mean_from_pretrain_to_prediction(sentence_bert, tmp_path):
    """prepare -> pretrain (records the source's pooling) -> finetune, peft (auto: mean) -> evaluate -> export
    (traced, ONNX agreeing with PyTorch) -> predict, on the tiny BERT that says it was trained for the mean."""
    from stages import predict
    from transfer.config import validate

    toy_texts(240).to_csv(tmp_path / "reviews.csv", index=False)
    params = validate(tiny_params(sentence_bert, tmp_path / "reviews.csv"))
    params["finetune"]["epochs"] = params["peft"]["epochs"] = 4
    params["export"]["source"] = "finetune"  # a plain model, which optimum would export with the first token
    run_pipeline(tmp_path, params)
    shipped = predict.load_classifier(tmp_path / "models/exported")
    predicted = [shipped.labels[i] for i in shipped.probabilities(["good great fun", "bad awful dull"]).argmax(1)]
    assert json.loads((tmp_path / "models/pretrained/config.json").read_text())[pooling.SOURCE_KEY] == "mean"
    for folder in ("models/finetuned", "models/peft/merged"):
        assert json.loads((tmp_path / folder / "config.json").read_text())[pooling.CONFIG_KEY] == "mean"
    assert metrics(tmp_path, "finetune")["val_accuracy"] >= 0.9
    exported = metrics(tmp_path, "export")
    assert exported["test_accuracy"]["onnx_fp32"] == exported["test_accuracy"]["pytorch_fp32"]
    assert predicted == ["positive", "negative"]
