"""Image positions start from a 2-D sine-cosine table: the table encodes row and column separately, nearby cells are
more alike than distant ones; the image encoder and the cross-modal image embedding start from it (with a zero row for
the global token), and so does the image decoder (input position t carries the code of the cell it predicts), unless
model.image.position_init says otherwise."""
import numpy as np
import pytest

from src.models.layers import sincos_2d
from src.models.opt import OPTModel
from tests.helpers import model_config


def test_row_and_column_halves_are_shared_along_columns_and_rows():
    grid, width = 4, 16
    table = sincos_2d(grid, width).reshape(grid, grid, width)
    half = width // 2
    for r in range(grid):   # same row -> same first half
        assert np.allclose(table[r, :, :half], table[r, 0, :half])
    for c in range(grid):   # same column -> same second half
        assert np.allclose(table[:, c, half:], table[0, c, half:])
    # cell (0, 0): sin(0) = 0 and cos(0) = 1 in both halves
    assert np.allclose(table[0, 0], [0] * 4 + [1] * 4 + [0] * 4 + [1] * 4)
    assert abs(table).max() <= 1.0


def test_nearby_cells_are_more_alike_than_distant_ones():
    grid = 8
    table = sincos_2d(grid, 128)
    rows = table.reshape(grid, grid, -1)
    sim = [float(rows[3, 0] @ rows[3, c]) for c in range(grid)]     # along one row, from the left edge
    assert sim[0] > sim[1] > sim[2] > sim[3]            # falls with distance (flattens at the far side)
    assert sim[1] > max(sim[3:]) and sim[2] > max(sim[4:])
    assert len({tuple(np.round(r, 5)) for r in table}) == grid * grid   # every cell has its own code


def test_width_not_divisible_by_four_is_refused():
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_2d(4, 30)


def tiny_model(*overrides):
    return OPTModel(model_config("tiny", ["model.text.vocab_size=50", *overrides]).model)


def test_image_encoder_and_cross_modal_embedding_start_from_the_table():
    model = tiny_model()
    i, grid = model.cfg.image, model.image_encoder.grid
    enc = model.image_encoder.position_embeddings.embedding_table.asnumpy()
    cross = model.image_embed.position_embeddings.embedding_table.asnumpy()
    assert np.allclose(enc[0], 0) and np.allclose(enc[1:], sincos_2d(grid, i.hidden))
    assert np.allclose(cross[0], 0) and np.allclose(cross[1:], sincos_2d(grid, model.cfg.cross.hidden))


def test_image_decoder_position_t_carries_the_cell_it_predicts():
    model = tiny_model()
    dec = model.image_decoder
    side = int(round((dec.max_len - 1) ** 0.5))
    table = dec.position_embeddings.embedding_table.asnumpy()
    assert table.shape[0] == dec.max_len == side * side + 1
    assert np.allclose(table[:side * side], sincos_2d(side, dec.width)) and np.allclose(table[-1], 0)
    text = model.text_decoder.position_embeddings.embedding_table.asnumpy()
    assert 0.01 < text.std() < 0.03                     # the text decoder keeps N(0, 0.02)


def small_random(table):
    return 0.01 < table.std() < 0.03 and abs(table).max() < 0.2


def test_normal_init_keeps_small_random_positions_everywhere():
    model = tiny_model("model.image.position_init=normal")
    for cell in (model.image_encoder, model.image_embed, model.image_decoder):
        assert small_random(cell.position_embeddings.embedding_table.asnumpy())


def test_feature_mode_regions_have_no_grid():
    model = tiny_model("model.image.mode=features")
    assert small_random(model.image_encoder.position_embeddings.embedding_table.asnumpy())
    assert small_random(model.image_embed.position_embeddings.embedding_table.asnumpy())


def test_unknown_position_init_names_the_key():
    with pytest.raises(ValueError, match="model.image.position_init"):
        tiny_model("model.image.position_init=learned")
