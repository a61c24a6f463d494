"""ALPA loss (SPEC §8) and SupCon against literal numpy loops; chunking, gradients, training."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from ood_audit.errors import DataError
from ood_audit.scores.alpa import ALPAHead, alpa_loss_from_projections, alpa_similarity
from ood_audit.scores.supcon import multi_positive_contrastive, supcon_loss

LABELS = [0, 0, 1, 1, 1, 2]  # anchor 5 has no positives


@pytest.fixture(autouse=True)
def _single_intra_op_thread():
    # The tensors here are tiny: one thread is as fast, and it does not stall in OpenMP barriers
    # when other processes share the CPU.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _softmax_rows(x: np.ndarray) -> np.ndarray:
    out = np.zeros_like(x)
    for r in range(x.shape[0]):
        exps = [math.exp(val - x[r].max()) for val in x[r]]
        out[r] = np.array(exps) / sum(exps)
    return out


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b) / (math.sqrt(float(a @ a)) * math.sqrt(float(b @ b)))


def reference_similarity(q, k, v, a, b) -> float:
    e = q.shape[-1]
    b_on_a = _softmax_rows(q[a] @ k[b].T / math.sqrt(e)) @ v[b]
    a_on_b = _softmax_rows(q[b] @ k[a].T / math.sqrt(e)) @ v[a]
    cells = range(q.shape[1])
    return sum(_cos(v[a][p], b_on_a[p]) + _cos(v[b][p], a_on_b[p]) for p in cells) / len(cells)


def reference_contrastive(logits: np.ndarray, labels: list[int]) -> float:
    n = len(labels)
    total = 0.0
    for i in range(n):
        denominator = sum(math.exp(logits[i][j]) for j in range(n) if j != i)
        positives = [j for j in range(n) if j != i and labels[j] == labels[i]]
        inner = sum(math.log(math.exp(logits[i][p]) / denominator) for p in positives)
        total += -inner / max(len(positives), 1)
    return total / n


def reference_alpa(q, k, v, labels, inv_temp=10.0) -> float:
    n = len(labels)
    logits = [[reference_similarity(q, k, v, i, j) * inv_temp for j in range(n)] for i in range(n)]
    return reference_contrastive(np.array(logits), labels)


@pytest.fixture()
def projections() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return tuple(torch.randn(6, 4, 3, generator=gen, dtype=torch.float64) for _ in range(3))


@pytest.mark.parametrize("chunk_size", [1, 4, 6, 64])
@pytest.mark.parametrize("use_checkpoint", [False, True])
def test_alpa_loss_matches_literal_reference(projections, chunk_size, use_checkpoint):
    q, k, v = projections
    expected = reference_alpa(q.numpy(), k.numpy(), v.numpy(), LABELS)
    loss = alpa_loss_from_projections(
        q, k, v, torch.tensor(LABELS), chunk_size=chunk_size, use_checkpoint=use_checkpoint
    )
    assert loss.item() == pytest.approx(expected, rel=1e-10, abs=1e-12)


def test_similarity_is_symmetric_and_bounded(projections):
    q, k, v = projections
    s = alpa_similarity(q, k, v, chunk_size=4)
    assert s.shape == (6, 6)
    assert torch.allclose(s, s.T) and s.abs().max() <= 2.0
    expected = reference_similarity(q.numpy(), k.numpy(), v.numpy(), 1, 4)
    assert s[1, 4].item() == pytest.approx(expected)


def test_chunked_equals_unchunked_in_float32():
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(21, 9, 5, generator=gen) for _ in range(3))
    labels = torch.arange(21) % 4
    whole = alpa_loss_from_projections(q, k, v, labels, chunk_size=21)
    for chunk_size in (2, 5, 8):
        chunked = alpa_loss_from_projections(q, k, v, labels, chunk_size=chunk_size)
        assert chunked.item() == pytest.approx(whole.item(), rel=1e-5)


def test_gradients_reach_q_k_v_and_pass_gradcheck(projections):
    q, k, v = (t[:4, :2, :2].clone().requires_grad_(True) for t in projections)
    labels = torch.tensor([0, 0, 1, 2])
    loss = alpa_loss_from_projections(q, k, v, labels, chunk_size=3)
    loss.backward()
    for t in (q, k, v):
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0
    assert torch.autograd.gradcheck(
        lambda a, b, c: alpa_loss_from_projections(a, b, c, labels, chunk_size=3), (q, k, v)
    )


def test_spec_batch_size_runs_forward_and_backward_in_chunks():
    # SPEC §8: batch 128 with two views (N = 256) at P = 16, e = 80 must fit; chunking plus
    # per-block recomputation keeps the memory O(chunk²·P·(P+e)) instead of O(N²·P·(P+e)).
    gen = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(256, 16, 80, generator=gen).requires_grad_(True) for _ in range(3))
    loss = alpa_loss_from_projections(q, k, v, torch.arange(256) // 2)
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(t.grad).all() for t in (q, k, v))


def test_alpa_head_structure_and_shapes():
    head = ALPAHead(in_channels=12)
    for phi in (head.phi_q, head.phi_k, head.phi_v):
        assert [type(m) for m in phi] == [nn.Linear, nn.ReLU, nn.Linear]
        assert phi[0].bias is None and phi[2].bias is None
        assert phi[0].weight.shape == (12, 12) and phi[2].weight.shape == (80, 12)
    q, k, v = head.project(torch.randn(3, 12, 4, 4))
    assert q.shape == k.shape == v.shape == (3, 16, 80)
    with pytest.raises(DataError, match=r"\[N, C, H, W\]"):
        head(torch.randn(3, 12, 16), torch.zeros(3))
    with pytest.raises(DataError, match="same shape"):
        alpa_loss_from_projections(q, k[:, :3], v, torch.zeros(3))
    with pytest.raises(DataError, match="labels has 2 entries"):
        alpa_loss_from_projections(q, k, v, torch.zeros(2))


def _two_views(images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    noise = 0.3 * torch.randn(images.shape, generator=gen)
    flipped = torch.flip(images, dims=[3])
    return torch.cat([images + noise, flipped + 0.3 * torch.randn(images.shape, generator=gen)])


def test_a_few_sgd_steps_of_alpa_finetuning_lower_the_loss():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    prototypes = torch.randn(3, 3, 8, 8, generator=gen)
    labels = torch.arange(12) % 3
    images = prototypes[labels] + 0.5 * torch.randn(12, 3, 8, 8, generator=gen)
    batch, batch_labels = _two_views(images, gen), torch.cat([labels, labels])  # N = 2B = 24
    backbone = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.ReLU(),
    )
    head = ALPAHead(in_channels=16, embed_dim=8, chunk_size=10)
    optimiser = torch.optim.SGD([*backbone.parameters(), *head.parameters()], lr=0.05, momentum=0.9)
    losses = []
    for _ in range(15):
        loss = head(backbone(batch), batch_labels)  # last-stage map [24, 16, 4, 4]
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert all(math.isfinite(x) for x in losses)
    assert np.mean(losses[-3:]) < 0.8 * losses[0]


def reference_supcon(z: np.ndarray, labels: list[int], temperature: float) -> float:
    """Khosla et al. eq. 2 with the reference code's τ/τ_base factor, τ_base = 0.07 (SPEC §8)."""
    unit = [row / math.sqrt(float(row @ row)) for row in z]
    n = len(unit)
    logits = [[float(unit[i] @ unit[j]) / temperature for j in range(n)] for i in range(n)]
    return reference_contrastive(np.array(logits), labels) * temperature / 0.07


@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_supcon_matches_reference(temperature):
    gen = torch.Generator().manual_seed(3)
    z = torch.randn(8, 5, generator=gen, dtype=torch.float64) * 3  # normalised inside the loss
    labels = [0, 1, 0, 1, 2, 2, 0, 3]  # label 3 has a single sample
    loss = supcon_loss(z, torch.tensor(labels), temperature=temperature)
    assert loss.item() == pytest.approx(reference_supcon(z.numpy(), labels, temperature), rel=1e-10)
    plain = supcon_loss(z, torch.tensor(labels), temperature=temperature, base_temperature=None)
    assert plain.item() == pytest.approx(loss.item() * 0.07 / temperature, rel=1e-10)


def test_anchor_rows_average_to_the_full_loss():
    """A DDP rank's share (its anchors against all rows) averages back to the loss over the whole batch."""
    from ood_audit.scores.alpa import alpa_loss_from_projections

    gen = torch.Generator().manual_seed(5)
    z = torch.randn(8, 5, generator=gen, dtype=torch.float64)
    q, k, v = (torch.randn(8, 4, 6, generator=gen, dtype=torch.float64) for _ in range(3))
    labels = torch.tensor([0, 1, 0, 1, 2, 2, 0, 3])
    halves = (slice(0, 4), slice(4, 8))
    full = supcon_loss(z, labels)
    assert sum(supcon_loss(z, labels, anchors=h) for h in halves).item() / 2 == pytest.approx(full.item(), rel=1e-12)
    full = alpa_loss_from_projections(q, k, v, labels, chunk_size=3)
    shares = [alpa_loss_from_projections(q, k, v, labels, chunk_size=3, anchors=h) for h in halves]
    assert (shares[0] + shares[1]).item() / 2 == pytest.approx(full.item(), rel=1e-12)


def test_supcon_default_temperature_gradients_and_edge_cases():
    z = torch.randn(6, 4, requires_grad=True)
    labels = torch.tensor(LABELS)
    loss = supcon_loss(z, labels)
    expected = reference_supcon(z.detach().double().numpy(), LABELS, 0.1)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    # Without any positive pair every anchor contributes 0.
    assert supcon_loss(torch.randn(4, 3), torch.arange(4)).item() == 0.0
    assert multi_positive_contrastive(torch.zeros(1, 1), torch.zeros(1)).item() == 0.0
    with pytest.raises(DataError, match="temperature"):
        supcon_loss(z, labels, temperature=0.0)
