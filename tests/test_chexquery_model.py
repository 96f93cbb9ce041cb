"""CheXQuery-MedVLM model modules at tiny widths (seed 001 §3.2 dimension table).
Run: /work/venv/bin/python -m pytest -q tests/test_chexquery_model.py"""
import pytest
import torch

from models.chexquery import ChexQuery, ChexQueryConfig, chexquery_losses
from models.cross_attention import CrossAttentionModule
from models.gated_fusion import GatedFusion
from models.text_decoder import (IGNORE, TextDecoderConfig, encode_targets, load_tokenizer, prompt_prefix,
                                 word_dropout)

GEN = dict(num_beams=4, no_repeat_ngram_size=3, length_penalty=1.0, early_stopping=True, min_length=4, max_length=12)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return ChexQuery(ChexQueryConfig()).eval()


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(TextDecoderConfig())


def test_shapes_through_every_module(model, tokenizer):
    images = torch.randn(3, 3, 96, 96)
    ids, labels, mask = encode_targets(tokenizer, ["Findings: a. | Impression: b.", "x", "heart normal"], "Report: ", 50, 0)
    out = model(images, ids, mask)
    D, P = 128, (96 // 16) ** 2
    assert out["cls"].shape == (3, D) and out["patches"].shape == (3, P, D)
    assert out["combined_queries"].shape == (3, 20, D) and out["attended_queries"].shape == (3, 20, D)
    assert out["condition_attended"].shape == (3, 14, D) and out["anatomical_attended"].shape == (3, 6, D)
    assert out["attention"].shape == (3, 2, 20, P)
    assert out["aux_logits"].shape == (3, 14) and out["visual_tokens"].shape == (3, 11, D)
    assert out["logits"].shape == (3, ids.shape[1], model.text_decoder.model.config.vocab_size)
    # the 14 + 6 split is the condition queries first, then the anatomical queries
    assert torch.equal(out["combined_queries"][0, :14], model.condition_queries.queries)
    assert torch.equal(out["combined_queries"][0, 14:], model.anatomical_queries.queries)
    assert torch.equal(out["condition_attended"], out["attended_queries"][:, :14])
    # attention rows are distributions over patches
    torch.testing.assert_close(out["attention"].sum(-1), torch.ones(3, 2, 20))


def test_gate_range_and_eleven_tokens():
    torch.manual_seed(1)
    fusion = GatedFusion(32, num_pooled=10, heads=4)
    torch.nn.init.normal_(fusion.gate_mlp[-1].weight, std=3.0)
    cls, queries = torch.randn(64, 32) * 5, torch.randn(64, 20, 32) * 5
    tokens, gate = fusion(cls, queries)
    assert tokens.shape == (64, 11, 32) and gate.shape == (64, 1)
    assert (gate >= 0).all() and (gate <= 1).all() and gate.std() > 0.01
    torch.testing.assert_close(tokens[:, 0], gate * cls)  # token 0 is the gated global token
    # the gate scales what the pooling reads: (1 - gate) * queries
    fusion.eval()
    g0 = fusion.gate_mlp(torch.cat([cls, queries.mean(1)], -1)).sigmoid()
    torch.testing.assert_close(g0, gate)


def test_cross_attention_returns_per_layer_weights():
    module = CrossAttentionModule(32, heads=4, layers=2).eval()
    q, p = torch.randn(2, 20, 32), torch.randn(2, 9, 32)
    out, maps = module(q, p)
    assert out.shape == (2, 20, 32) and maps.shape == (2, 2, 20, 9)
    # layer 1's map equals a hand computation of softmax(QK^T/sqrt(d)) averaged over heads
    attn = module.layers[0].attention
    Wq, Wk, _ = attn.in_proj_weight.chunk(3)
    bq, bk, _ = attn.in_proj_bias.chunk(3)
    Q = (q @ Wq.T + bq).view(2, 20, 4, 8).transpose(1, 2)
    K = (p @ Wk.T + bk).view(2, 9, 4, 8).transpose(1, 2)
    expected = torch.softmax(Q @ K.transpose(-1, -2) / 8 ** 0.5, -1).mean(1)
    torch.testing.assert_close(maps[:, 0], expected, atol=1e-5, rtol=1e-4)


def test_condition_queries_are_bert_cls_embeddings(model):
    from models.condition_queries import bert_cls_embeddings
    expected = bert_cls_embeddings(model.condition_queries.names, "tiny-hub/bert-mlm")
    torch.testing.assert_close(model.condition_queries.queries.detach(), expected)
    xavier = ChexQuery(ChexQueryConfig(condition_init="xavier")).condition_queries.queries
    assert not torch.allclose(xavier, expected)


def test_centered_bert_init_keeps_the_differences_at_the_bert_norm():
    from models.condition_queries import ConditionQueries, bert_cls_embeddings
    raw = bert_cls_embeddings(ConditionQueries(128, init="xavier").names, "tiny-hub/bert-mlm")  # (14, 128)
    centered = ConditionQueries(128, init="bert", center=True).queries.detach()
    torch.testing.assert_close(centered.norm(dim=1), raw.norm(dim=1).mean().expand(14))
    # the same directions as the raw vectors minus their mean: BERT's geometry, without its shared offset
    direction = torch.nn.functional.normalize(raw - raw.mean(0, keepdim=True), dim=1)
    torch.testing.assert_close(torch.nn.functional.normalize(centered, dim=1), direction)
    cos = lambda q: (torch.nn.functional.normalize(q, dim=1) @ torch.nn.functional.normalize(q, dim=1).T)[
        ~torch.eye(14, dtype=torch.bool)].mean()
    assert cos(raw) > 0.5 > cos(centered)  # raw [CLS] vectors are nearly parallel; centred ones are not


def test_prompt_tokens_excluded_from_loss(tokenizer):
    prompt = "Write the report: "
    ids, labels, mask = encode_targets(tokenizer, ["Findings: heart normal. | Impression: normal."], prompt, 100, 0)
    n_prompt = len(tokenizer(prompt, add_special_tokens=False).input_ids)
    assert (labels[0, :n_prompt] == IGNORE).all() and (labels[0, n_prompt:] != IGNORE).all()
    assert ids[0, 0] == 0 and torch.equal(ids[0, 1:], torch.where(labels[0, :-1] == IGNORE, ids[0, 1:], labels[0, :-1]))
    # a logit change at a prompt position does not change the loss; one at a report position does
    logits = torch.randn(1, ids.shape[1], 640)
    out = {"logits": logits, "aux_logits": torch.zeros(1, 14)}
    base = chexquery_losses(out, labels, torch.zeros(1, 14), 1.0, 0.5)["generation"]
    bumped = logits.clone()
    bumped[0, 0] += torch.randn(640) * 10
    assert torch.equal(chexquery_losses({**out, "logits": bumped}, labels, torch.zeros(1, 14), 1.0, 0.5)["generation"], base)
    bumped[0, n_prompt] += torch.randn(640) * 10
    assert chexquery_losses({**out, "logits": bumped}, labels, torch.zeros(1, 14), 1.0, 0.5)["generation"] != base


def test_word_dropout_replaces_only_report_inputs(tokenizer):
    prompt = "Write the report: "
    reports = ["Findings: heart normal. | Impression: normal.", "Findings: large left pleural effusion."]
    ids, labels, _ = encode_targets(tokenizer, reports, prompt, 100, 0)
    n_prompt = len(tokenizer(prompt, add_special_tokens=False).input_ids)
    unk = tokenizer.convert_tokens_to_ids("<extra_id_0>")   # an id no encoded text contains
    assert not (ids == unk).any()
    assert torch.equal(word_dropout(ids, labels, 0.0, unk), ids)
    everything = word_dropout(ids, labels, 1.0, unk)
    report_inputs = torch.zeros_like(ids, dtype=torch.bool)
    for row, report in enumerate(reports):   # inputs 1 + n_prompt ... 1 + n_prompt + len(report) - 1
        n_report = len(tokenizer(report, add_special_tokens=False).input_ids)
        report_inputs[row, 1 + n_prompt:1 + n_prompt + n_report] = True
    assert torch.equal(everything == unk, report_inputs)            # start, prompt and padding untouched
    assert torch.equal(everything[~report_inputs], ids[~report_inputs])
    half = word_dropout(ids, labels, 0.5, unk, torch.Generator().manual_seed(0))
    again = word_dropout(ids, labels, 0.5, unk, torch.Generator().manual_seed(0))
    assert torch.equal(half, again) and 0 < int((half == unk).sum()) < int(report_inputs.sum())


def test_loss_terms_match_hand_computation():
    torch.manual_seed(0)
    logits, aux = torch.randn(2, 3, 5), torch.randn(2, 14)
    labels = torch.tensor([[-100, 1, 2], [3, -100, -100]])
    targets = (torch.rand(2, 14) > 0.5).float()
    terms = chexquery_losses({"logits": logits, "aux_logits": aux}, labels, targets, 1.0, 0.3, label_smoothing=0.1)
    logp = logits.log_softmax(-1)
    picks = [(0, 1, 1), (0, 2, 2), (1, 0, 3)]
    nll = torch.stack([-logp[b, t, y] for b, t, y in picks])
    smooth = torch.stack([-logp[b, t].mean() for b, t, _ in picks])
    gen = (0.9 * nll + 0.1 * smooth).mean()
    auxl = -(targets * torch.log(torch.sigmoid(aux)) + (1 - targets) * torch.log(1 - torch.sigmoid(aux))).mean()
    torch.testing.assert_close(terms["generation"], gen)
    torch.testing.assert_close(terms["auxiliary"], auxl)
    torch.testing.assert_close(terms["loss"], gen + 0.3 * auxl)


def test_prompt_template_needs_placeholder():
    assert prompt_prefix("Report: {report}") == "Report: "
    with pytest.raises(ValueError, match=r"\{report\}"):
        prompt_prefix("Write a chest X-ray report:")


def test_beam_search_returns_report_tokens_after_prompt(model, tokenizer):
    prompt_ids = tokenizer("Report: ", add_special_tokens=False).input_ids
    tokens, out = model.generate(torch.randn(2, 3, 96, 96), prompt_ids, GEN)
    assert tokens.shape[0] == 2 and 4 <= tokens.shape[1] <= 12
    assert out["visual_tokens"].shape == (2, 11, 128)
    texts = tokenizer.batch_decode(tokens, skip_special_tokens=True)
    assert all(isinstance(t, str) for t in texts)
    # deterministic (no sampling): same input, same output
    again, _ = model.generate(torch.zeros(2, 3, 96, 96), prompt_ids, GEN)
    again2, _ = model.generate(torch.zeros(2, 3, 96, 96), prompt_ids, GEN)
    assert torch.equal(again, again2)
    # no 3-gram repeats within a generated sequence (up to its </s>: a finished beam is padded after it)
    eos = tokenizer.eos_token_id
    for row in tokens.tolist():
        row = row[:row.index(eos)] if eos in row else row
        grams = [tuple(row[i:i + 3]) for i in range(len(row) - 2)]
        assert len(grams) == len(set(grams))


def test_visual_tokens_reach_the_decoder_at_t5_encoder_output_scale():
    from models.text_decoder import TextDecoder
    torch.manual_seed(0)
    normed = TextDecoder(TextDecoderConfig(pretrained=False, normalize_visual=True), 128).eval()
    plain = TextDecoder(TextDecoderConfig(pretrained=False, normalize_visual=False), 128).eval()
    with torch.no_grad():
        normed.model.encoder.final_layer_norm.weight.uniform_(0.5, 1.5)
    tokens = torch.randn(2, 11, 128) * 0.2                                             # (B, V, D) small, as trained
    tokens[:, 0] *= 0.1                                                                # a gated-down global token
    hidden = normed.encoder_outputs(tokens).last_hidden_state                          # (B, V, E)
    weight = normed.model.encoder.final_layer_norm.weight
    # RMS 1 over the sample's 11 tokens together (before the norm's weight) ...
    torch.testing.assert_close((hidden / weight).pow(2).mean((1, 2)).sqrt(), torch.ones(2), atol=1e-3, rtol=1e-3)
    # ... one scale per sample, so the ratio between tokens (the gate's balance) is kept
    ratio = (hidden / weight).norm(dim=-1) / tokens.norm(dim=-1)                        # (B, V)
    torch.testing.assert_close(ratio, ratio[:, :1].expand(-1, 11))
    torch.testing.assert_close(normed.encoder_outputs(10 * tokens).last_hidden_state, hidden, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(plain.encoder_outputs(tokens).last_hidden_state, tokens)  # off: the tokens as they are
    plain.load_state_dict(normed.state_dict())                                        # same weights, norm off
    ids = torch.zeros(2, 5, dtype=torch.long)
    assert not torch.allclose(normed(tokens, ids), plain(tokens, ids))
    assert torch.allclose(normed(tokens, ids), plain(hidden, ids), atol=1e-5)            # the scaling is the only change
