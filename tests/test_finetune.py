"""Fine-tuning near the start: L2-SP, per-group learning rates, the gradual-unfreezing schedule."""

import numpy as np
import pytest

from imgsim.finetune import L2SP, LayerwiseAdam, _block, backbone_groups, multipliers


def test_multiplier_schedule_hand_worked():
    """4 backbone blocks, factor 0.1, a block every 2 epochs: epoch 0-1 head only, 2-3 the top
    block, ... all four from epoch 8; group 0 (head) always at 1."""
    assert multipliers(0, 5, 0.1, 2).tolist() == [1, 0, 0, 0, 0]
    assert multipliers(3, 5, 0.1, 2).tolist() == pytest.approx([1, 0.1, 0, 0, 0])
    assert multipliers(5, 5, 0.1, 2).tolist() == pytest.approx([1, 0.1, 0.1, 0, 0])
    assert multipliers(9, 5, 0.1, 2).tolist() == pytest.approx([1, 0.1, 0.1, 0.1, 0.1])
    assert multipliers(0, 5, 0.5, 0).tolist() == pytest.approx([1, 0.5, 0.5, 0.5, 0.5])


def test_layerwise_adam_scales_each_groups_step():
    """Adam's first step is lr · g / (|g| + eps) ≈ lr per coordinate: a group at 0.1 moves a tenth."""
    import keras

    a, b, c = (keras.Variable(np.zeros(3, np.float32), name=n) for n in "abc")
    optimizer = LayerwiseAdam({b.path: 1, c.path: 2}, 3, learning_rate=0.01)
    optimizer.build([a, b, c])
    optimizer.set_multipliers([1.0, 0.1, 0.0])
    grad = np.array([1.0, -2.0, 3.0], np.float32)
    optimizer.apply([grad, grad, grad], [a, b, c])
    np.testing.assert_allclose(np.asarray(a), -0.01 * np.sign(grad), rtol=1e-4)
    np.testing.assert_allclose(np.asarray(b), -0.001 * np.sign(grad), rtol=1e-4)
    np.testing.assert_array_equal(np.asarray(c), 0.0)  # not unfrozen yet


def test_l2sp_is_zero_at_the_start_and_the_squared_distance_after():
    start = np.array([[1.0, -2.0], [0.5, 3.0]], np.float32)
    reg = L2SP(0.1, start)
    assert float(reg(start)) == 0.0
    moved = start + np.array([[0.3, 0.0], [0.0, -0.4]], np.float32)
    assert float(reg(moved)) == pytest.approx(0.1 * (0.09 + 0.16))


def test_backbone_groups_follow_blocks_from_the_top():
    from imgsim.model import EmbeddingConfig, backbones_of, build_embedding_model

    model = build_embedding_model(EmbeddingConfig(alpha=0.35, image_size=64, trainable_layers=30))
    groups, n = backbone_groups(backbones_of(model))
    # The last 30 layers: Conv_1, block_16, block_15, block_14 (BatchNorm never trains).
    assert n == 5
    by_group = {}
    for path, g in groups.items():
        by_group.setdefault(g, set()).add(_block(path.split("/")[-2]))
    assert by_group == {1: {"Conv_1"}, 2: {"block_16"}, 3: {"block_15"}, 4: {"block_14"}}
    trainable = {v.path for v in model.trainable_weights}
    assert set(groups) < trainable  # head and pooling variables are group 0
