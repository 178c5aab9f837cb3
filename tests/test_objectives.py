"""Objectives and chunked terms against naive float64 references written here (full softmax, loops)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tokensft.core.errors import ConfigError
from tokensft.core.head import LogitHead
from tokensft.train.chunked import target_terms
from tokensft.train.losses import LOSSES, TokenTerms, poft_loss, token_loss
from tokensft.train.objectives import GRAMMAR, NORMALIZE, OBJECTIVES, objectives_help, parse_objective

N, V, K = 12, 50, 4
BASIC = ["nll", "p", "power:10", "power:0.5", "dft", "threshold-p:0.2", "threshold-nll:0.2", "threshold-p<=:0.3",
         "threshold-nll<=:0.3", "profit", "profit:0.3"]
QTARGET = [f"qtarget:gamma={g},prior={pr}" for g in ("0.7", "p", "p^2", "threshold:0.2")
           for pr in ("scorer", "self", "uniform")]
ALL_SPECS = BASIC + QTARGET


def make_case(seed: int = 0):
    """Random float32 leaf logits (some targets boosted to high p), targets, distinct top-k ids and log-probs."""
    g = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, V, (N,), generator=g)
    logits = torch.randn(N, V, generator=g) * 2.0
    logits[torch.arange(N), targets] += torch.linspace(-2.0, 9.0, N)  # spread p(y) from tiny to ~1
    ids = torch.stack([torch.randperm(V, generator=g)[:K] for _ in range(N)])
    lps = torch.log_softmax(torch.randn(N, K, generator=g), -1) - 1.0
    lps[1, -1] = lps[4, -2:] = float("-inf")  # padding in rows with fewer than K entries
    return logits.requires_grad_(True), targets, ids, lps


def terms_from_logits(logits, targets, ids, lps) -> TokenTerms:
    """TokenTerms straight from (N, V) logits, as the trainer's chunk computes them."""
    logp_all = torch.log_softmax(logits, -1)
    return TokenTerms(logprob=logp_all.gather(1, targets[:, None]).squeeze(1), prior_logprob=logp_all.gather(1, ids),
                      prior_probs=torch.softmax(lps, -1), self_ce=-(logp_all.detach().exp() * logp_all).sum(-1),
                      uniform_ce=-logp_all.mean(-1))


def naive_prior(prior: str, i: int, probs, sg_probs, ids, lps) -> torch.Tensor:
    """Naive cross-entropy -sum_v pi_v log p_v of one row to the named prior."""
    if prior in ("scorer", "teacher"):
        w = [math.exp(x) for x in lps[i].tolist()]
        return -sum(w[k] / sum(w) * torch.log(probs[i, ids[i, k]]) for k in range(K))
    if prior == "self":
        return -sum(sg_probs[i, v] * torch.log(probs[i, v]) for v in range(V))
    return -sum(torch.log(probs[i, v]) for v in range(V)) / V


def naive(spec: str, logits, targets, ids, lps):
    """Per-token float64 loss (with graph to the float64 logits) and kept flags, from the formula table."""
    z = logits.detach().double().requires_grad_(True)
    e = torch.exp(z - z.max(-1, keepdim=True).values)
    probs = e / e.sum(-1, keepdim=True)
    sg_probs = probs.detach()
    name, _, arg = spec.partition(":")
    losses, kept = [], []
    for i in range(N):
        p, sp = probs[i, targets[i]], sg_probs[i, targets[i]].item()
        keep = True
        if name == "nll":
            loss = -torch.log(p)
        elif name == "p":
            loss = 1 - p
        elif name == "power":
            loss = (1 - p ** float(arg)) / float(arg)
        elif name == "dft":
            loss = -sp * torch.log(p)
        elif name.startswith("threshold") or name == "profit":
            q = float(arg) if arg else 0.1
            keep = sp <= q if name.endswith("<=") else sp >= q
            loss = (1 - p if name.startswith("threshold-p") else -torch.log(p)) * float(keep)
        else:
            opts = dict(kv.split("=") for kv in arg.split(","))
            gs = opts["gamma"]
            gam = (sp if gs == "p" else sp ** 2 if gs == "p^2" else float(sp >= float(gs.split(":")[1]))
                   if gs.startswith("threshold") else float(gs))
            loss = -gam * torch.log(p) + (1 - gam) * naive_prior(opts["prior"], i, probs, sg_probs, ids, lps)
        losses.append(loss)
        kept.append(keep)
    return z, torch.stack(losses), torch.tensor(kept)


def run_objective(spec: str, seed: int = 0):
    """token_loss on a fresh case: per-token loss, kept and the gradient of the summed loss w.r.t. logits."""
    logits, targets, ids, lps = make_case(seed)
    loss, kept = token_loss(parse_objective(spec), terms_from_logits(logits, targets, ids, lps))
    loss.sum().backward()
    return loss.detach(), kept, logits.grad, (logits, targets, ids, lps)


@pytest.mark.parametrize("spec", ALL_SPECS)
def test_token_loss_matches_naive(spec):
    """Loss, kept and logit gradient of every objective equal the naive float64 reference."""
    loss, kept, grad, case = run_objective(spec)
    z, ref, ref_kept = naive(spec, *case)
    ref.sum().backward()
    assert loss.dtype == torch.float32 and loss.shape == (N,)
    torch.testing.assert_close(loss.double(), ref.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grad.double(), z.grad, atol=1e-5, rtol=1e-5)
    assert torch.equal(kept, ref_kept)


def test_case_exercises_thresholds():
    """The random case keeps some and drops some tokens at every threshold, none too close to call."""
    logits, targets, _, _ = make_case()
    p = torch.softmax(logits.detach().double(), -1)[torch.arange(N), targets]
    for q in (0.1, 0.2, 0.3):
        assert 0 < int((p >= q).sum()) < N and (p - q).abs().min() > 1e-4


@pytest.mark.parametrize("spec", ["p", "qtarget:gamma=p,prior=self"])
def test_dft_gradient(spec):
    """-p, and qtarget with Q = sg(p) onehot + (1 - sg(p)) sg(p_model), have DFT's logit gradient p_y (p - onehot)."""
    torch.testing.assert_close(run_objective(spec)[2], run_objective("dft")[2], atol=1e-6, rtol=1e-6)


def test_power_tends_to_nll():
    """power:A -> nll as A -> 0; at A = 1e-6 every token within 1e-4 (expm1, no 1 - exp cancellation)."""
    loss, _, grad, _ = run_objective("power:1e-4")
    nll, _, nll_grad, _ = run_objective("nll")
    assert abs(loss.sum() / nll.sum() - 1) < 1e-3
    torch.testing.assert_close(grad, nll_grad, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(run_objective("power:1e-6")[0], nll, atol=0, rtol=1e-4)


@pytest.mark.parametrize("spec,want", [("threshold-p:0.25", [0, 1, 1]), ("threshold-nll<=:0.25", [1, 1, 0]),
                                       ("threshold-p<=:0.5", [1, 1, 1]), ("profit:0.5", [0, 0, 1])])
def test_threshold_boundary_is_inclusive(spec, want):
    """1[sg(p) >= Q] and 1[sg(p) <= Q] keep a token whose p equals Q exactly (p = 0.25, 0.5 exact in float32)."""
    logp = torch.log(torch.tensor([0.125, 0.25, 0.5]))
    assert torch.equal(logp.exp(), torch.tensor([0.125, 0.25, 0.5]))
    assert token_loss(parse_objective(spec), TokenTerms(logprob=logp))[1].tolist() == [bool(w) for w in want]
    qt = token_loss(parse_objective("qtarget:gamma=threshold:0.25,prior=uniform"),
                    TokenTerms(logp, uniform_ce=torch.full((3,), 9.0)))
    assert qt[0].tolist() == [9.0, -logp[1].item(), -logp[2].item()]  # gamma = 1[sg(p) >= T] is inclusive too


@pytest.mark.parametrize("spec", ["qtarget", "qtarget:gamma=1,prior=teacher", "qtarget:gamma=1,prior=self",
                                  "qtarget:gamma=1,prior=uniform", "qtarget:gamma=threshold:0,prior=self",
                                  "profit:0"])
def test_equals_nll(spec):
    """gamma = 1 (any prior), a threshold of 0 and profit:0 reduce to plain NLL."""
    loss, kept, grad, _ = run_objective(spec)
    nll, _, nll_grad, _ = run_objective("nll")
    assert kept.all()
    torch.testing.assert_close(loss, nll, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(grad, nll_grad, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("eps", [0.1, 0.35])
def test_uniform_prior_is_label_smoothing(eps):
    """qtarget prior=uniform gamma=1-eps == cross_entropy with label_smoothing=eps."""
    loss, _, grad, (logits, targets, _, _) = run_objective(f"qtarget:gamma={1 - eps},prior=uniform")
    z = logits.detach().clone().requires_grad_(True)
    ref = F.cross_entropy(z, targets, label_smoothing=eps, reduction="sum")
    ref.backward()
    torch.testing.assert_close(loss.sum(), ref.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grad, z.grad, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("spec", QTARGET + ["qtarget:gamma=0.4,prior=teacher"])
def test_qtarget_gradient_is_p_minus_q(spec):
    """The logit gradient of every qtarget is softmax(z) - Q for the Q it defines."""
    _, _, grad, (logits, targets, ids, lps) = run_objective(spec)
    opts = parse_objective(spec).params
    probs = torch.softmax(logits.detach().double(), -1)
    py = probs[torch.arange(N), targets]
    kind, value = opts["gamma"]
    g = {"const": torch.full_like(py, value), "p": py ** value, "threshold": (py >= value).double()}[kind]
    if opts["prior"] == "self":
        pi = probs
    elif opts["prior"] == "uniform":
        pi = torch.full_like(probs, 1 / V)
    else:
        pi = torch.zeros_like(probs).scatter_add_(1, ids, torch.softmax(lps.double(), -1))
    q = g[:, None] * F.one_hot(targets, V).double() + (1 - g[:, None]) * pi
    torch.testing.assert_close(q.sum(-1), torch.ones(N, dtype=torch.float64))
    torch.testing.assert_close(grad.double(), probs - q, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("beta,gamma", [(1.0, 0.0), (0.5, 0.3), (2.0, -1.0), (10.0, 2.5)])
def test_poft_loss(beta, gamma):
    """PoFT loss, its gradient w.r.t. s and the reported weight, against the naive formulas."""
    s = torch.tensor([-0.3, -1.2, -2.5, -0.05, -4.0], requires_grad=True)
    ref = torch.tensor([-0.5, -1.0, -3.0, -0.05, -1.0])
    loss, weight = poft_loss(s, ref, beta, gamma)
    loss.sum().backward()
    sig = [1 / (1 + math.exp(-(beta * (a - b) + gamma))) for a, b in zip(s.tolist(), ref.tolist())]
    wts = [beta / (1 + math.exp(-(beta * (b - a) - gamma))) for a, b in zip(s.tolist(), ref.tolist())]
    for got, want in [(loss, [-math.log(x) for x in sig]), (s.grad, [-beta * (1 - x) for x in sig]), (weight, wts)]:
        torch.testing.assert_close(got.double(), torch.tensor(want, dtype=torch.float64), atol=1e-6, rtol=1e-5)
    assert not weight.requires_grad


@pytest.mark.parametrize("spec", ALL_SPECS + ["qtarget", "poft", "poft:beta=2,gamma=0.5", "qtarget:prior=teacher"])
def test_parse_every_spec(spec):
    """Every spec parses, and its normalizer default follows its source."""
    obj = parse_objective(spec)
    want = "kept-targets" if spec.startswith("threshold") else "sequences" if spec.startswith("poft") else "all-targets"
    assert obj.default_normalize == want
    assert obj.sequence_level == spec.startswith("poft")


def test_parse_defaults_and_params():
    """Defaults: profit tau 0.1, poft beta 1 gamma 0, qtarget gamma 1 prior scorer; params as documented."""
    assert parse_objective("profit").params == {"tau": 0.1}
    assert parse_objective("profit:0.3").params == {"tau": 0.3}
    assert parse_objective("poft").params == {"beta": 1.0, "gamma": 0.0}
    qt = parse_objective("qtarget")
    assert qt.params == {"gamma": ("const", 1.0), "prior": "scorer"} and qt.prior == "scorer"
    assert parse_objective("qtarget:gamma=p^2,prior=self").params["gamma"] == ("p", 2.0)
    assert parse_objective("qtarget:gamma=threshold:0.2").params["gamma"] == ("threshold", 0.2)
    assert parse_objective("threshold-nll<=:0.3").params == {"kind": "nll", "q": 0.3, "below": True}
    assert parse_objective("power:10").params == {"alpha": 10.0}
    assert parse_objective("nll").prior is None


@pytest.mark.parametrize("spec", ["foo", "power:0", "power:-1", "profit:2", "threshold-p:1.5", "qtarget:prior=x",
                                  "poft:alpha=1", "qtarget:gamma=1.5", "nll:3", "threshold-p"])
def test_parse_rejects(spec):
    """Bad specs raise ConfigError naming the value."""
    with pytest.raises(ConfigError, match="--objective"):
        parse_objective(spec)


class TinyHead(LogitHead):
    """LogitHead around a bare Linear(H, V) instead of a model's output embeddings."""

    def __init__(self, hidden: int, vocab: int, softcap=None):
        self.proj = torch.nn.Linear(hidden, vocab, bias=False)
        self.softcap, self.scale = softcap, None


def all_terms(hidden, targets, head, ids, lps, chunk=None, recompute=True):
    """The five terms, chunked through target_terms or computed directly from full logits."""
    if chunk is not None:
        t = target_terms(hidden, targets, head, chunk, ids, lps, self_ce=True, uniform_ce=True, recompute=recompute)
        return t.logprob, t.prior_logprob, t.prior_probs, t.self_ce, t.uniform_ce
    logp_all = torch.log_softmax(head(hidden), -1)
    return (logp_all.gather(1, targets[:, None]).squeeze(1), logp_all.gather(1, ids),
            torch.softmax(lps, -1).nan_to_num(0.0), -(logp_all.detach().exp() * logp_all).sum(-1),
            -logp_all.mean(-1))


def chunk_case(n: int, softcap=None):
    """Hidden (n, 8) leaf, targets, prior ids/log-probs (with padding) and a TinyHead."""
    torch.manual_seed(1)
    head = TinyHead(8, V, softcap)
    hidden = torch.randn(n, 8).requires_grad_(True)
    targets, ids = torch.randint(0, V, (n,)), torch.randint(0, V, (n, K))
    lps = torch.log_softmax(torch.randn(n, K), -1)
    if n > 3:
        lps[3, 1:] = lps[6] = float("-inf")  # row 3 partly padded, row 6 has no prior at all
    return hidden, targets, head, ids, lps


def scalar_and_grads(terms, hidden, head):
    """A scalar mixing every term (the prior-weighted CE uses the no-grad prior_probs), with its gradients."""
    logp, prior_logp, prior_probs, self_ce, uniform_ce = terms
    w = torch.linspace(0.5, 1.5, logp.shape[0])
    total = (w * logp).sum() - (prior_probs * prior_logp).sum() + 0.7 * self_ce.sum() + 1.3 * uniform_ce.sum()
    return total, torch.autograd.grad(total, [hidden, head.proj.weight])


@pytest.mark.parametrize("softcap", [None, 3.0])
@pytest.mark.parametrize("chunk", [1, 5, 1000])
def test_chunked_equals_direct(chunk, softcap):
    """Chunked, checkpointed terms and their gradients (hidden and lm_head) equal the direct computation."""
    hidden, targets, head, ids, lps = chunk_case(13, softcap)
    got = all_terms(hidden, targets, head, ids, lps, chunk)
    want = all_terms(hidden, targets, head, ids, lps)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert not got[2].requires_grad and got[2][3, 1:].eq(0).all() and got[2][6].eq(0).all()
    total, grads = scalar_and_grads(got, hidden, head)
    want_total, want_grads = scalar_and_grads(want, hidden, head)
    torch.testing.assert_close(total, want_total, atol=1e-5, rtol=1e-5)
    for a, b in zip(grads, want_grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_chunked_recompute_is_identical():
    """recompute=True (checkpointed) and recompute=False give identical terms and gradients."""
    hidden, targets, head, ids, lps = chunk_case(13)
    on = all_terms(hidden, targets, head, ids, lps, 5, recompute=True)
    off = all_terms(hidden, targets, head, ids, lps, 5, recompute=False)
    for a, b in zip(on, off):
        assert torch.equal(a, b)
    for a, b in zip(scalar_and_grads(on, hidden, head)[1], scalar_and_grads(off, hidden, head)[1]):
        assert torch.equal(a, b)


@pytest.mark.parametrize("spec", ["nll", "qtarget:gamma=0.5,prior=scorer", "qtarget:gamma=p,prior=self",
                                  "qtarget:gamma=0.9,prior=uniform"])
def test_chunked_no_targets(spec):
    """N = 0: empty terms still carry the graph, so a zero loss backpropagates zero gradients."""
    hidden, targets, head, ids, lps = chunk_case(0)
    terms = target_terms(hidden, targets, head, 4, ids, lps, self_ce=True, uniform_ce=True)
    assert terms.logprob.shape == (0,) and terms.prior_logprob.shape == (0, K) and terms.self_ce.shape == (0,)
    loss, kept = token_loss(parse_objective(spec), terms)
    assert loss.shape == (0,) and kept.shape == (0,)
    total = loss.sum()
    total.backward()
    assert total.item() == 0.0 and hidden.grad.shape == (0, 8)
    assert head.proj.weight.grad is not None and not head.proj.weight.grad.any()


@pytest.mark.parametrize("gamma", ["0", "0.5"])
def test_qtarget_target_without_stored_prior_is_nll(gamma):
    """A target whose stored top-k is all padding (-inf) has pi = onehot(y): its loss is -log p, not g * -log p."""
    logits, targets, ids, lps = make_case(3)
    lps[2] = float("-inf")
    terms = terms_from_logits(logits, targets, ids, lps)
    terms.prior_probs = terms.prior_probs.nan_to_num(0.0)  # as the chunk renormalizes: an empty row is 0
    loss, _ = token_loss(parse_objective(f"qtarget:gamma={gamma},prior=scorer"), terms)
    torch.testing.assert_close(loss[2], -terms.logprob[2])
    assert not torch.allclose(loss[3], -terms.logprob[3])  # rows with a prior are untouched


@pytest.mark.parametrize("prior,self_ce,uniform_ce", [(False, False, False), (True, False, False), (True, True, True),
                                                      (False, False, True)])
def test_fused_chunk_backward_passes_gradcheck(prior, self_ce, uniform_ce):
    """The hand-written backward of the chunk terms against finite differences, in float64 (repeated prior ids too)."""
    from tokensft.train.chunked import _ChunkTerms

    g = torch.Generator().manual_seed(5)
    logits = torch.randn(6, 9, generator=g, dtype=torch.float64).requires_grad_(True)
    targets = torch.randint(0, 9, (6,), generator=g)
    ids = torch.randint(0, 9, (6, 3), generator=g) if prior else None
    if prior:
        ids[0, 1] = ids[0, 0]  # a repeated id accumulates both gradients

    def terms(x):
        logp, prior_logp, _, uniform = _ChunkTerms.apply(x, targets, ids, self_ce, uniform_ce)
        return (logp, *([prior_logp] if prior else []), *([uniform] if uniform_ce else []))

    assert torch.autograd.gradcheck(terms, (logits,))


def test_losses_cover_the_token_level_catalogue():
    """LOSSES has one function per token-level objective of OBJECTIVES, and nothing else."""
    token_level = {name for name, kind in OBJECTIVES.items() if not kind.sequence_level}
    assert set(LOSSES) == token_level and "nll" in token_level and "poft" not in token_level


@pytest.mark.parametrize("spec", ALL_SPECS + ["poft", "qtarget"])
def test_catalogue_facts(spec):
    """Each parsed spec takes its facts from its kind: only thresholds and ProFit keep by the current p."""
    obj = parse_objective(spec)
    assert obj.kind is OBJECTIVES[obj.name]
    assert obj.online_kept == (obj.name in ("threshold", "profit"))
    assert obj.default_normalize in NORMALIZE


def test_grammar_is_unchanged():
    """The grammar in --objective errors, built from the catalogue, reads as it always has."""
    assert GRAMMAR == ("nll, p, power:A, dft, threshold-p:Q, threshold-nll:Q, threshold-p<=:Q, threshold-nll<=:Q, "
                       "profit[:T], poft[:beta=B,gamma=G], "
                       "qtarget[:gamma=G|p|p^A|threshold:T,prior=teacher|scorer|self|uniform]")


def test_help_lists_every_objective():
    """The train --help epilog gives every objective its usage, default normalization and source; then --mask
    and each --normalize choice."""
    text = objectives_help()
    lines = text.splitlines()
    for kind in OBJECTIVES.values():
        start = next(i for i, line in enumerate(lines) if line == f"  {kind.usage}" or line.startswith(f"  {kind.usage} "))
        end = next((i for i in range(start + 1, len(lines)) if not lines[i].startswith("   ")), len(lines))
        entry = " ".join(line.strip() for line in lines[start:end])  # the usage line and the indented ones below
        assert f"[{kind.default_normalize}]" in entry and f"from: {kind.source}" in entry, kind.name
    assert "--mask SPEC" in text and all(any(line.startswith(f"  {name} ") for line in lines) for name in NORMALIZE)
    assert max(map(len, lines)) <= 110


def test_objectives_and_config_import_without_torch():
    """The CLI builds the train help for every command: objectives and config must not import torch."""
    import subprocess
    import sys

    code = "import sys, tokensft.train.objectives, tokensft.train.config; assert 'torch' not in sys.modules"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
