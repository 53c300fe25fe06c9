"""Models people train: dict inputs, dict / HF outputs, sequence logits with ignore_index, causal shift,
tied weights, adapters-only parameters — each against a float64 brute force written here (per-sample
Jacobians by torch.func.jacrev over the flat parameter vector; nothing of fisherkit's engine)."""

import pytest
import torch
from torch import nn
from torch.func import functional_call, jacrev

import fisherkit as fk
from fisherkit.errors import FisherkitError

V, D, T = 7, 6, 5  # vocabulary, width, sequence length


class TinyLM(nn.Module):
    """Embedding → LayerNorm → Linear/tanh → LM head, keyword inputs, a dict output (as HF models)."""

    def __init__(self, tie=False):
        super().__init__()
        self.emb = nn.Embedding(V, D)
        self.norm = nn.LayerNorm(D)
        self.mix = nn.Linear(D, D)
        self.head = nn.Linear(D, V, bias=False)
        if tie:
            self.head.weight = self.emb.weight

    def forward(self, input_ids, attention_mask=None):
        h = self.norm(self.emb(input_ids))
        h = h + torch.tanh(self.mix(h))
        if attention_mask is not None:
            h = h * attention_mask.unsqueeze(-1).to(h.dtype)
        return {"logits": self.head(h), "hidden": h}


def _batch(n=6, seed=0, ignore=True):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (n, T), generator=g)
    labels = ids.clone()
    if ignore:
        labels[0, :2] = -100
        labels[n - 1, 4] = -100
    return {"input_ids": ids, "attention_mask": torch.ones(n, T, dtype=torch.long), "labels": labels}


def _model(tie=False, seed=0):
    torch.manual_seed(seed)
    return TinyLM(tie).double().eval()


def reference(model, batch, kind, shift=True, per_token=False):
    """F = (1/N) Σₙ Jₙᵀ Λₙ Jₙ (exact) or (1/N) Σₙ gₙgₙᵀ (empirical) over counted positions only."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = dict(model.named_parameters())
    theta = torch.cat([params[n].detach().reshape(-1) for n in names])
    sizes = [params[n].numel() for n in names]

    def logits(th, i):
        full = {k: v.detach() for k, v in params.items()}
        full.update({n: t.reshape(params[n].shape) for n, t, in zip(names, torch.split(th, sizes))})
        x = {k: v[i : i + 1] for k, v in batch.items() if k != "labels"}
        f = functional_call(model, full, (), x)["logits"][0]
        return f[:-1] if shift else f

    y_all = batch["labels"][:, 1:] if shift else batch["labels"]
    P = theta.numel()
    F = torch.zeros(P, P, dtype=torch.float64)
    n_tok = 0
    for i in range(batch["input_ids"].shape[0]):
        y = y_all[i]
        keep = y != -100
        n_tok += int(keep.sum())
        if kind == "exact":
            J = jacrev(lambda th: logits(th, i))(theta)  # [T', V, P]
            p = torch.softmax(logits(theta, i), -1)
            lam = torch.diag_embed(p) - p.unsqueeze(-1) * p.unsqueeze(-2)
            for t in torch.nonzero(keep).flatten().tolist():
                F += J[t].T @ lam[t] @ J[t]
        else:
            def loss(th):
                f = logits(th, i)
                return -(torch.log_softmax(f, -1)[keep].gather(-1, y[keep].unsqueeze(-1))).sum()
            g = jacrev(loss)(theta)
            F += torch.outer(g, g)
    return F / (n_tok if per_token else batch["input_ids"].shape[0])


@pytest.mark.parametrize("kind", ["exact", "empirical"])
@pytest.mark.parametrize("structure", ["dense", "diag"])
def test_dict_batch_hf_style_output_shift_and_ignore_index(kind, structure):
    model, batch = _model(), _batch()
    ref = reference(model, batch, kind)
    F = fk.fisher(model, batch, kind=kind, structure=structure, shift_labels=True)
    got = F.to_dense() if structure == "dense" else F.diag()
    want = ref if structure == "dense" else ref.diagonal()
    assert F.num_samples == 6
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("approx", ["expand", "reduce"])
@pytest.mark.parametrize("structure", ["kfac", "ekfac"])
def test_per_token_kfac_is_the_per_sequence_one_times_sequences_over_tokens(structure, approx):
    """F_token = (B / N_tok) F_sequence exactly (the same sums, another count): KFAC's product must scale
    once by that ratio, not twice (A and G both divided by the token count was (B/N_tok)²; bug found by
    the curvlinops comparison). Two batches of different sizes, the same tokens per sequence (with
    ignore_index positions the ratio differs by batch and A is the token-weighted mean of the batches' A)."""
    model = _model()
    data = [_batch(n=6, seed=0, ignore=False), _batch(n=3, seed=1, ignore=False)]
    seq = fk.fisher(model, data, structure=structure, shift_labels=True, kfac_approx=approx)
    tok = fk.fisher(model, data, structure=structure, shift_labels=True, kfac_approx=approx, per_token=True)
    n_tok = sum(int((b["labels"][:, 1:] != -100).sum()) for b in data)
    assert tok.num_samples == n_tok and seq.num_samples == 9
    if structure == "kfac":
        torch.testing.assert_close(tok.to_dense(), seq.to_dense() * 9 / n_tok, rtol=1e-9, atol=1e-13)
    else:  # EKFAC's refitted scalings are a mean over the same count
        torch.testing.assert_close(tok.diag(), seq.diag() * 9 / n_tok, rtol=1e-9, atol=1e-13)


def test_per_token_normalisation_and_implicit():
    model, batch = _model(), _batch()
    ref = reference(model, batch, "exact", per_token=True)
    F = fk.fisher(model, batch, structure="dense", shift_labels=True, per_token=True)
    n_tok = int((batch["labels"][:, 1:] != -100).sum())
    assert F.num_samples == n_tok
    torch.testing.assert_close(F.to_dense(), ref, rtol=1e-9, atol=1e-12)
    imp = fk.fisher(model, batch, structure="implicit", shift_labels=True, per_token=True)
    v = torch.randn(ref.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert imp.num_samples == n_tok
    torch.testing.assert_close(imp.mv(v), ref @ v, rtol=1e-8, atol=1e-10)


def test_ignored_positions_are_left_out_of_every_kind():
    """Labels −100 at a position: exact, mc and empirical all ignore it (the mc estimate, like the
    exact one, is unchanged by whatever logits sit there)."""
    model = _model()
    batch = _batch(ignore=False)
    masked = dict(batch, labels=batch["labels"].clone())
    masked["labels"][:, 1:3] = -100
    for kind in ("exact", "mc", "empirical"):
        F = fk.fisher(model, masked, kind=kind, structure="dense", shift_labels=True,
                      generator=torch.Generator().manual_seed(0))
        # reference: the same Fisher on the sequences cut to the counted positions is impossible to form
        # directly for a causal model, so compare with the brute force for exact/empirical, and for mc
        # check that scrambling the ignored logits' labels changes nothing
        if kind != "mc":
            torch.testing.assert_close(F.to_dense(), reference(model, masked, kind), rtol=1e-9, atol=1e-12)
    m1 = fk.fisher(model, masked, kind="mc", structure="diag", shift_labels=True, mc_samples=4000,
                   generator=torch.Generator().manual_seed(3)).diag()
    exact = reference(model, masked, "exact").diagonal()
    err = float((m1 - exact).norm() / exact.norm())
    assert err < 0.06  # 4,000 label draws per position: Monte-Carlo error ≈ 1/√4000 · spread (measured 0.02)


def test_tied_embedding_and_head_are_one_parameter():
    """GPT-2 style weight tying: one parameter, both uses' contributions summed before squaring."""
    model, batch = _model(tie=True), _batch()
    names = [n for n, _ in model.named_parameters()]
    assert "head.weight" not in names and "emb.weight" in names
    F = fk.fisher(model, batch, structure="dense", shift_labels=True)
    torch.testing.assert_close(F.to_dense(), reference(model, batch, "exact"), rtol=1e-9, atol=1e-12)
    K = fk.fisher(model, batch, structure="kfac", shift_labels=True)
    assert K.info.names == F.info.names  # the head's Linear is not factored apart from its tied twin


@pytest.mark.parametrize("kind", ["exact", "empirical"])
def test_tied_weight_uses_are_summed_without_torch_func(kind, monkeypatch):
    """Both uses of a tied weight (Embedding and Linear head) give closed-form per-sample gradients that
    the engine sums before squaring: no per-sample torch.func pass, and every structure that keeps the
    tied block (dense, block, diag) equals the brute force. A tied use that is not an Embedding/Linear
    (or not called once) sends the weight, with all its uses, to torch.func instead."""
    from fisherkit.engine import collect

    def refuse(*a, **k):
        raise AssertionError("torch.func per-sample pass used")

    model, batch = _model(tie=True), _batch()
    ref = reference(model, batch, kind)
    monkeypatch.setattr(collect, "persample_grads", refuse)
    for structure in ("dense", "block", "diag"):
        F = fk.fisher(model, batch, structure=structure, kind=kind, shift_labels=True)
        got = F.diag() if structure == "diag" else F.to_dense()
        if structure == "block":  # per-module blocks: compare the tied weight's own block
            idx = torch.arange(F.info.offsets[0], F.info.offsets[0] + F.info.numels[0])
            got, want = got[idx][:, idx], ref[idx][:, idx]
        else:
            want = ref.diagonal() if structure == "diag" else ref
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


def test_a_tied_use_off_the_closed_forms_sends_every_use_to_torch_func():
    from fisherkit.engine.units import make_plan, settle

    class Scaled(nn.Module):  # the head uses the tied weight through a custom module: no handler
        def __init__(self, emb):
            super().__init__()
            self.weight = emb.weight

        def forward(self, h):
            return h @ self.weight.T

    model = _model(tie=True)
    model.head = Scaled(model.emb)
    ids = _batch()["input_ids"]
    plan = settle(model, make_plan(model, dict(model.named_parameters()), elementwise=True), {"input_ids": ids})
    assert "emb.weight" in plan.func_names
    assert all("emb.weight" not in u.names.values() for u in plan.elem_units)


def test_only_trainable_parameters_by_default():
    model, batch = _model(), _batch()
    for n, p in model.named_parameters():
        p.requires_grad_(n.startswith("mix."))
    F = fk.fisher(model, batch, structure="dense", shift_labels=True)
    assert F.info.names == ["mix.weight", "mix.bias"]
    torch.testing.assert_close(F.to_dense(), reference(model, batch, "exact"), rtol=1e-9, atol=1e-12)


def test_output_selector_and_errors():
    model, batch = _model(), _batch()
    a = fk.fisher(model, batch, structure="diag", shift_labels=True).diag()
    b = fk.fisher(model, batch, structure="diag", shift_labels=True, output=lambda o: o["logits"]).diag()
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(FisherkitError, match="no such entry"):
        fk.fisher(model, batch, output="scores")
    with pytest.raises(FisherkitError, match="shift_labels"):
        fk.fisher(model, batch, shift_labels="yes")


def test_model_unchanged_and_batchnorm_buffers_kept():
    """allow_batchnorm_train=True: the running statistics and num_batches_tracked do not move."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 3)).double().train()
    X = torch.randn(32, 4, dtype=torch.float64)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for s in ("diag", "kfac", "ekfac", "dense", "implicit"):
        fk.fisher(model, (X, None), structure=s, allow_batchnorm_train=True)
    assert model.training and model[1].training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_dropout_in_training_mode_is_refused():
    model = nn.Sequential(nn.Linear(4, 6), nn.Dropout(0.2), nn.Linear(6, 3)).double().train()
    with pytest.raises(FisherkitError, match="Dropout layer '1' is in training mode"):
        fk.fisher(model, (torch.randn(8, 4, dtype=torch.float64), None))
    model.eval()
    assert fk.fisher(model, (torch.randn(8, 4, dtype=torch.float64), None)).num_samples == 8


def test_one_logit_categorical_is_refused():
    model = nn.Linear(3, 1).double()
    with pytest.raises(FisherkitError, match="at least 2 logits"):
        fk.fisher(model, (torch.randn(5, 3, dtype=torch.float64), None))


def _hf_llama(tie, attn="eager"):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(vocab_size=V, hidden_size=8, intermediate_size=12, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=16,
                                   tie_word_embeddings=tie, attn_implementation=attn)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg).double().eval()


def hf_reference(model, batch, params):
    """Exact Fisher of the chosen parameters by jacrev through the HF model, causal shift, −100 left out."""
    named = dict(model.named_parameters())
    theta = torch.cat([named[n].detach().reshape(-1) for n in params])
    sizes = [named[n].numel() for n in params]

    def logits(th, i):
        full = {k: v.detach() for k, v in named.items()}
        full.update({n: t.reshape(named[n].shape) for n, t in zip(params, torch.split(th, sizes))})
        out = functional_call(model, full, (), {"input_ids": batch["input_ids"][i : i + 1],
                                                "attention_mask": batch["attention_mask"][i : i + 1]})
        return out.logits[0, :-1]

    F = torch.zeros(theta.numel(), theta.numel(), dtype=torch.float64)
    for i in range(batch["input_ids"].shape[0]):
        keep = batch["labels"][i, 1:] != -100
        J = jacrev(lambda th: logits(th, i))(theta)
        p = torch.softmax(logits(theta, i), -1)
        lam = torch.diag_embed(p) - p.unsqueeze(-1) * p.unsqueeze(-2)
        for t in torch.nonzero(keep).flatten().tolist():
            F += J[t].T @ lam[t] @ J[t]
    return F / batch["input_ids"].shape[0]


@pytest.mark.parametrize("tie", [False, True])
def test_huggingface_causal_lm(tie):
    """A randomly initialised LlamaForCausalLM (BatchEncoding-like dict with labels, ModelOutput): the
    Fisher of the final norm and LM head (tied to the embedding when ``tie``) against brute force."""
    model = _hf_llama(tie)
    batch = _batch(n=3)
    params = ["model.norm.weight", "model.embed_tokens.weight" if tie else "lm_head.weight"]
    F = fk.fisher(model, batch, structure="dense", params=params, shift_labels=True)
    assert F.info.names == [n for n, _ in model.named_parameters() if n in params]  # named_parameters order
    # HF computes the rotary tables in float32 whatever the model's dtype, so a batch of 3 and the
    # reference's batches of 1 differ at ~1e-7 relative: the tolerance says so
    R = hf_reference(model, batch, F.info.names)
    torch.testing.assert_close(F.to_dense(), R, rtol=1e-6, atol=1e-6 * float(R.abs().max()))


def test_peft_lora_fisher_is_over_the_adapters():
    peft = pytest.importorskip("peft")
    model = _hf_llama(False)
    lora = peft.get_peft_model(model, peft.LoraConfig(r=2, target_modules=["q_proj", "v_proj"], lora_dropout=0.0,
                                                      init_lora_weights=False))
    lora.eval()
    names = [n for n, p in lora.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)
    batch = _batch(n=3)
    F = fk.fisher(lora, batch, structure="dense", shift_labels=True)
    assert F.info.names == names
    R = hf_reference(lora, batch, names)
    torch.testing.assert_close(F.to_dense(), R, rtol=1e-6, atol=1e-6 * float(R.abs().max()))  # float32 rotary
    K = fk.fisher(lora, batch, structure="kfac", shift_labels=True)  # LoRA A/B are Linear: Kronecker factors
    assert len(K.factors()) == len(names)


def test_embedding_and_norms_take_the_closed_form_path():
    """LayerNorm, RMSNorm and Embedding (padding_idx included) get per-sample gradients in closed form
    (no torch.func), and every structure still equals the brute force where it is exact."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(V, D, padding_idx=0)
            self.ln = nn.LayerNorm(D)
            self.rms = nn.RMSNorm(D, eps=1e-5)
            self.head = nn.Linear(D, V)

        def forward(self, input_ids, attention_mask=None):
            return {"logits": self.head(torch.tanh(self.rms(self.ln(self.emb(input_ids)))))}

    torch.manual_seed(1)
    model = Net().double().eval()
    batch = _batch()
    batch["input_ids"][1, :3] = 0  # padding tokens: no gradient for row 0
    from fisherkit.engine.collect import settled_plan
    from fisherkit.engine.units import make_plan

    plan = settled_plan(model, make_plan(model, dict(model.named_parameters()), elementwise=True),
                        (0, {"input_ids": batch["input_ids"]}, None))
    assert plan.func_names == [] and {u.module_name for u in plan.elem_units} == {"emb", "ln", "rms"}
    ref = reference(model, batch, "exact")
    F = fk.fisher(model, batch, structure="dense", shift_labels=True)
    torch.testing.assert_close(F.to_dense(), ref, rtol=1e-9, atol=1e-12)
    B = fk.fisher(model, batch, structure="block", shift_labels=True)
    offsets = dict(zip(B.info.names, B.info.offsets))
    for blk in B.blocks:  # each block is the brute-force Fisher restricted to that module's parameters
        idx = torch.cat([torch.arange(offsets[n], offsets[n] + k) for n, k in zip(blk.names, blk.numels)])
        torch.testing.assert_close(blk.to_dense(), ref[idx][:, idx], rtol=1e-9, atol=1e-12)


def test_a_norm_the_handler_does_not_reproduce_falls_back_to_torch_func():
    class OddRMSNorm(nn.Module):  # named like an RMSNorm, but scales by 2·w: the closed form must not be used
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(D))

        def forward(self, x):
            return 2 * self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)

    model = nn.Sequential(nn.Linear(4, D), OddRMSNorm(), nn.Linear(D, 3)).double()
    X = torch.randn(10, 4, dtype=torch.float64)
    from fisherkit.engine.collect import settled_plan
    from fisherkit.engine.units import make_plan

    plan = settled_plan(model, make_plan(model, dict(model.named_parameters()), elementwise=True), (0, X, None))
    assert plan.func_names == ["1.weight"] and not plan.elem_units
    from reference import brute_fisher

    torch.testing.assert_close(fk.fisher(model, (X, None), structure="dense").to_dense(),
                               brute_fisher(model, X), rtol=1e-9, atol=1e-12)


def test_kfac_reduce_is_exact_when_every_position_sees_the_same_input():
    """One sample whose T positions share one input: the per-sample gradient Σ_t g_t ãᵀ is ĝ āᵀ, so
    KFAC-reduce's G ⊗ A equals the exact Fisher block (brute force); KFAC-expand does not."""
    torch.manual_seed(2)
    lin, head = nn.Linear(3, 4).double(), nn.Linear(4, 5).double()

    class Seq(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin, self.head = lin, head

        def forward(self, x):  # x [B, 3] -> the same input at T=4 positions, positions mixed before the head
            h = torch.tanh(self.lin(x.unsqueeze(1).expand(-1, 4, -1)))
            return self.head(h.cumsum(1))

    model = Seq()
    X = torch.randn(1, 3, dtype=torch.float64)
    from reference import brute_fisher

    ref = brute_fisher(model, X)[:16, :16]  # lin.weight (12) + lin.bias (4)
    red = fk.fisher(model, (X, None), structure="kfac", kfac_approx="reduce")
    blk = [b for b in red.blocks if b.names[0] == "lin.weight"][0]
    torch.testing.assert_close(blk.to_dense(), ref, rtol=1e-9, atol=1e-12)
    exp = fk.fisher(model, (X, None), structure="kfac", kfac_approx="expand")
    eb = [b for b in exp.blocks if b.names[0] == "lin.weight"][0]
    assert float((eb.to_dense() - ref).norm() / ref.norm()) > 0.05
    with pytest.raises(FisherkitError, match="kfac_approx"):
        fk.fisher(model, (X, None), structure="kfac", kfac_approx="mean")


def test_huggingface_sdpa_model_whose_forward_vmap_cannot_batch():
    """HF's sdpa attention-mask code has data-dependent control flow that vmap over samples refuses:
    per-sample gradients then loop over samples (directions still batched) and stay exact."""
    model = _hf_llama(True, attn="sdpa")
    batch = _batch(n=2)
    params = ["model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight"]
    F = fk.fisher(model, batch, structure="dense", params=params, shift_labels=True)
    R = hf_reference(model, batch, F.info.names)
    torch.testing.assert_close(F.to_dense(), R, rtol=1e-6, atol=1e-6 * float(R.abs().max()))


def _tiny_gpt2():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(vocab_size=V, n_positions=16, n_embd=8, n_layer=1, n_head=2,
                                  attn_implementation="eager", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(cfg).double().eval()


def test_gpt2_conv1d_layers_are_hooked():
    """GPT-2's Conv1D (a Linear with its weight stored [in, out]) is a hook unit and LayerNorms take the
    closed form: no torch.func pass; dense and diag equal the brute force."""
    model = _tiny_gpt2()
    batch = _batch(n=2)
    params = ["transformer.h.0.attn.c_attn.weight", "transformer.h.0.attn.c_attn.bias",
              "transformer.h.0.mlp.c_proj.weight", "transformer.h.0.ln_2.weight"]
    from fisherkit.engine.collect import settled_plan
    from fisherkit.engine.units import make_plan

    chosen = {n: p for n, p in model.named_parameters() if n in params}
    plan = settled_plan(model, make_plan(model, chosen, elementwise=True), (0, {"input_ids": batch["input_ids"]}, None))
    assert plan.func_names == []
    assert {u.weight for u in plan.hook_units if u.transposed} == {params[0], params[2]}
    F = fk.fisher(model, batch, structure="dense", params=params, shift_labels=True)
    R = hf_reference(model, batch, F.info.names)
    torch.testing.assert_close(F.to_dense(), R, rtol=1e-9, atol=1e-12 * float(R.abs().max()))
    Dg = fk.fisher(model, batch, structure="diag", params=params, shift_labels=True)
    torch.testing.assert_close(Dg.diag(), R.diagonal(), rtol=1e-9, atol=1e-12 * float(R.abs().max()))


def test_gpt2_whole_model_has_no_torch_func_pass():
    """All of a GPT2LMHeadModel — tied wte/lm_head, wpe, LayerNorms, Conv1Ds — off the per-sample torch.func
    path; its diagonal equals the brute force."""
    from fisherkit.engine.collect import settled_plan
    from fisherkit.engine.units import make_plan

    model = _tiny_gpt2()
    batch = _batch(n=2)
    chosen = dict(model.named_parameters())
    plan = settled_plan(model, make_plan(model, chosen, elementwise=True), (0, {"input_ids": batch["input_ids"]}, None))
    assert plan.func_names == []
    D = fk.fisher(model, batch, structure="diag", shift_labels=True)
    R = hf_reference(model, batch, D.info.names)
    torch.testing.assert_close(D.diag(), R.diagonal(), rtol=1e-9, atol=1e-12 * float(R.abs().max()))


@pytest.mark.parametrize("structure", ["kfac", "ekfac"])
def test_gpt2_conv1d_kronecker_blocks_are_laid_out_right(structure, tmp_path):
    """One sample at one position and one direction (empirical): KFAC and EKFAC are then exact (the
    per-sample gradient is δ aᵀ), so their blocks over the transposed [in, out] weights must equal the
    dense Fisher entry for entry — in to_dense, mv, diag, solve and after save/load."""
    model = _tiny_gpt2()
    g = torch.Generator().manual_seed(3)
    batch = {"input_ids": torch.randint(0, V, (1, 1), generator=g), "labels": torch.randint(0, V, (1, 1), generator=g)}
    params = ["transformer.h.0.attn.c_attn.weight", "transformer.h.0.attn.c_attn.bias",
              "transformer.h.0.mlp.c_fc.weight", "transformer.h.0.mlp.c_proj.weight", "transformer.h.0.mlp.c_proj.bias"]
    K = fk.fisher(model, batch, kind="empirical", structure=structure, params=params)
    full = fk.fisher(model, batch, kind="empirical", structure="dense", params=params).to_dense()
    D = torch.zeros_like(full)  # KFAC is block-diagonal over layers: the dense Fisher's layer blocks
    offs = dict(zip(K.info.names, K.info.offsets))
    for b in K.blocks:
        idx = torch.cat([torch.arange(offs[n], offs[n] + k) for n, k in zip(b.names, b.numels)])
        D[idx[:, None], idx[None, :]] = full[idx[:, None], idx[None, :]]
    assert {b.kind for b in K.blocks} == {"kron" if structure == "kfac" else "ekron"}
    assert all(b.transposed for b in K.blocks)
    torch.testing.assert_close(K.to_dense(), D, rtol=1e-9, atol=1e-14)
    v = torch.randn(D.shape[0], dtype=D.dtype, generator=g)
    torch.testing.assert_close(K.mv(v), D @ v, rtol=1e-9, atol=1e-14)
    torch.testing.assert_close(K.diag(), D.diagonal(), rtol=1e-9, atol=1e-14)
    eye = torch.eye(D.shape[0], dtype=D.dtype)
    torch.testing.assert_close(K.solve(v, 0.1), torch.linalg.solve(D + 0.1 * eye, v), rtol=1e-8, atol=1e-12)
    K.save(tmp_path / "k.safetensors")
    torch.testing.assert_close(fk.load(tmp_path / "k.safetensors").to_dense(), D, rtol=1e-9, atol=1e-14)


def test_a_kronecker_factor_that_cannot_fit_is_refused_before_any_work():
    """An LM head over a large vocabulary: its G factor (V × V) is refused with the numbers, not allocated."""
    model = nn.Sequential(nn.Embedding(50_000, 4), nn.Linear(4, 50_000)).eval()
    calls = []
    model.register_forward_hook(lambda *a: calls.append(1))
    # refused by the per-factor max_memory check, or (machines with < 21 GiB free) by the total estimate first
    with pytest.raises(FisherkitError, match=r"(50000×50000 Kronecker factor \(9.31 GiB\)|needs about 18.63 GiB).*params="):
        fk.fisher(model, (torch.randint(0, 50_000, (2, 3)), None), structure="kfac", kind="mc")
    assert len(calls) <= 2  # at most the plan's two probe forwards (r and r − 1 rows) ran: no statistics gathered
