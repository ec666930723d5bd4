"""Vectorised question generation from scene tables: every type is a few tensor ops over the batch.

Each row gets one question of its requested type. The result is the language suffix after the image:
question words, "?", "ASSISTANT", ":", the one-word answer and "</s>", right-padded with [PAD]. Rows
where the scene admits no question of that type (e.g. no shape occurs exactly once) come back with
valid=False; training masks them out, the eval generator resamples them.

Objects are named by their unique (colour, shape) pair ("the red circle"), by a shape that occurs once
("the circle") or by a colour that occurs once ("the red object"), so every question has one answer.
"""

import torch

from . import vocab as V
from .scenes import MAX_OBJECTS, NUM_COMBOS

K = MAX_OBJECTS
TYPE_INDEX = {t: i for i, t in enumerate(V.QUESTION_TYPES)}
TAIL = [V.ID["?"], V.ID["assistant"], V.ID[":"]]
RELATIONS = ["left", "right", "above", "below"]


def _seq(n, device, parts):
    cols = [p if torch.is_tensor(p) else torch.full((n,), p, dtype=torch.long, device=device) for p in parts]
    return torch.stack(cols, dim=1)


def _pick(mask, gen):
    """A uniformly random True column per row of a bool matrix (any column if the row has none)."""
    scores = torch.rand(mask.shape, generator=gen, device=mask.device) + mask.float() * 2
    return scores.argmax(dim=1), mask.any(dim=1)


def _pick_pair(mask, gen):
    n = mask.shape[0]
    flat, ok = _pick(mask.reshape(n, -1), gen)
    return flat // K, flat % K, ok


def _take(t, idx):
    return t.gather(1, idx.view(-1, 1))[:, 0]


def _counts(values, present, classes):
    onehot = torch.nn.functional.one_hot(values, classes) * present.unsqueeze(-1)
    return onehot.sum(dim=1)  # [N, classes]


def _ids(table, index, device):
    return torch.tensor(table, dtype=torch.long, device=device)[index]


class _Builder:
    """Collects variants (token rows plus answers) and merges them per row."""

    def __init__(self, n, device):
        self.n, self.device = n, device
        self.rows = []

    def add(self, select, words, answer, valid):
        self.rows.append((select, _seq(self.n, self.device, list(words) + TAIL), answer, valid))

    def build(self, length):
        n, device = self.n, self.device
        tokens = torch.full((n, length), V.PAD, dtype=torch.long, device=device)
        answer = torch.full((n,), V.UNK, dtype=torch.long, device=device)
        answer_pos = torch.zeros(n, dtype=torch.long, device=device)
        valid = torch.zeros(n, dtype=torch.bool, device=device)
        for select, words, ans, ok in self.rows:
            L = words.shape[1]
            full = torch.cat([words, ans.view(-1, 1), torch.full((n, 1), V.EOS, dtype=torch.long, device=device)], 1)
            full = torch.nn.functional.pad(full, (0, length - full.shape[1]), value=V.PAD)
            s = select.view(-1, 1)
            tokens = torch.where(s, full, tokens)
            answer = torch.where(select, ans, answer)
            answer_pos = torch.where(select, torch.full_like(answer_pos, L), answer_pos)
            valid = torch.where(select, ok, valid)
        return tokens, answer, answer_pos, valid


SUFFIX_LENGTH = 14  # longest variant: 9 question words + "? ASSISTANT :" + answer + </s>


def make_questions(scenes, types, gen, relation_margin=8.0, count_from_present=0.75):
    """types: long [N] indices into vocab.QUESTION_TYPES. Returns a dict of tensors:
    suffix [N, SUFFIX_LENGTH] (question ... answer </s> PAD*), answer [N], answer_pos [N] (column of
    the answer in suffix), valid [N], subtype [N] (variant index within the type, for reporting)."""
    n = len(scenes)
    device = scenes.cx.device
    pres = scenes.present
    col, shp, siz = scenes.color, scenes.shape, scenes.size
    color_ids = _ids(V.COLOR_IDS, col, device)
    shape_ids = _ids(V.SHAPE_IDS, shp, device)
    b = _Builder(n, device)
    is_type = lambda name: types == TYPE_INDEX[name]  # noqa: E731
    subtype = torch.zeros(n, dtype=torch.long, device=device)
    W = V.ID

    shape_count = _counts(shp, pres, len(V.SHAPES))
    color_count = _counts(col, pres, len(V.COLORS))
    shape_unique = pres & (shape_count.gather(1, shp) == 1)
    color_unique = pres & (color_count.gather(1, col) == 1)

    # color: "what color is the circle?" (the shape occurs once)
    i, ok = _pick(shape_unique, gen)
    b.add(is_type("color"), [W["what"], W["color"], W["is"], W["the"], _take(shape_ids, i)], _take(color_ids, i), ok)

    # shape: "what shape is the red object?" (the colour occurs once)
    i, ok = _pick(color_unique, gen)
    b.add(is_type("shape"), [W["what"], W["shape"], W["is"], W["the"], _take(color_ids, i), W["object"]],
          _take(shape_ids, i), ok)

    # size: "what size is the red circle?"
    i, ok = _pick(pres, gen)
    b.add(is_type("size"), [W["what"], W["size"], W["is"], W["the"], _take(color_ids, i), _take(shape_ids, i)],
          _ids(V.SIZE_IDS, _take(siz, i), device), ok)

    # exist: "is there a red circle?" - half about a present object, half about an absent combination
    combo_present = torch.zeros(n, NUM_COMBOS, dtype=torch.bool, device=device)
    combo_present.scatter_(1, col * len(V.SHAPES) + shp, pres)
    want_yes = torch.rand(n, generator=gen, device=device) < 0.5
    i, _ = _pick(pres, gen)
    absent, any_absent = _pick(~combo_present, gen)
    ex_color = torch.where(want_yes, _take(col, i), absent // len(V.SHAPES))
    ex_shape = torch.where(want_yes, _take(shp, i), absent % len(V.SHAPES))
    b.add(is_type("exist"), [W["is"], W["there"], W["a"], _ids(V.COLOR_IDS, ex_color, device),
                             _ids(V.SHAPE_IDS, ex_shape, device)],
          torch.where(want_yes, torch.full_like(ex_color, V.YES), torch.full_like(ex_color, V.NO)),
          want_yes | any_absent)

    # count: "how many red objects are there?" / "how many circles are there?"
    by_color = torch.rand(n, generator=gen, device=device) < 0.5
    from_present = torch.rand(n, generator=gen, device=device) < count_from_present
    i, _ = _pick(pres, gen)
    c_attr = torch.where(from_present, _take(col, i),
                         torch.randint(0, len(V.COLORS), (n,), generator=gen, device=device))
    s_attr = torch.where(from_present, _take(shp, i),
                         torch.randint(0, len(V.SHAPES), (n,), generator=gen, device=device))
    c_num = _take(color_count, c_attr)
    s_num = _take(shape_count, s_attr)
    t_count = is_type("count")
    b.add(t_count & by_color, [W["how"], W["many"], _ids(V.COLOR_IDS, c_attr, device), W["objects"], W["are"],
                               W["there"]], _ids(V.NUMBER_IDS, c_num, device), torch.ones_like(by_color))
    b.add(t_count & ~by_color, [W["how"], W["many"], _ids(V.PLURAL_IDS, s_attr, device), W["are"], W["there"]],
          _ids(V.NUMBER_IDS, s_num, device), torch.ones_like(by_color))
    subtype = torch.where(t_count & ~by_color, torch.ones_like(subtype), subtype)

    # relation: "is the red circle left of the blue square?" (|offset| >= margin along the asked axis)
    rel = torch.randint(0, 4, (n,), generator=gen, device=device)
    ddx = scenes.cx.unsqueeze(2) - scenes.cx.unsqueeze(1)  # [N, i, j] = x_i - x_j
    ddy = scenes.cy.unsqueeze(2) - scenes.cy.unsqueeze(1)
    pair_ok = pres.unsqueeze(2) & pres.unsqueeze(1) & ~torch.eye(K, dtype=torch.bool, device=device)
    horizontal = (rel < 2).view(-1, 1, 1)
    apart = torch.where(horizontal, ddx.abs(), ddy.abs()) >= relation_margin
    i, j, ok = _pick_pair(pair_ok & apart, gen)
    dxij = _take(scenes.cx, i) - _take(scenes.cx, j)
    dyij = _take(scenes.cy, i) - _take(scenes.cy, j)
    truth = torch.stack([dxij < 0, dxij > 0, dyij < 0, dyij > 0], dim=1).gather(1, rel.view(-1, 1))[:, 0]
    rel_answer = torch.where(truth, torch.full_like(rel, V.YES), torch.full_like(rel, V.NO))
    t_rel = is_type("relation")
    a = [_take(color_ids, i), _take(shape_ids, i)]
    bb = [W["the"], _take(color_ids, j), _take(shape_ids, j)]
    for r, words in enumerate([[W["left"], W["of"]], [W["right"], W["of"]], [W["above"]], [W["below"]]]):
        b.add(t_rel & (rel == r), [W["is"], W["the"]] + a + words + bb, rel_answer, ok)
    subtype = torch.where(t_rel, rel, subtype)

    # compare: "is the red circle larger than the blue square?" (sizes differ, so yes/no is balanced)
    larger = torch.rand(n, generator=gen, device=device) < 0.5
    differ = siz.unsqueeze(2) != siz.unsqueeze(1)
    i, j, ok = _pick_pair(pair_ok & differ, gen)
    i_larger = _take(siz, i) > _take(siz, j)
    truth = torch.where(larger, i_larger, ~i_larger)
    cmp_answer = torch.where(truth, torch.full_like(rel, V.YES), torch.full_like(rel, V.NO))
    t_cmp = is_type("compare")
    word = torch.where(larger, torch.full_like(rel, W["larger"]), torch.full_like(rel, W["smaller"]))
    b.add(t_cmp, [W["is"], W["the"], _take(color_ids, i), _take(shape_ids, i), word, W["than"], W["the"],
                  _take(color_ids, j), _take(shape_ids, j)], cmp_answer, ok)
    subtype = torch.where(t_cmp & ~larger, torch.ones_like(subtype), subtype)

    suffix, answer, answer_pos, valid = b.build(SUFFIX_LENGTH)
    return {"suffix": suffix, "answer": answer, "answer_pos": answer_pos, "valid": valid, "subtype": subtype}
