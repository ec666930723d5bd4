"""The task's closed vocabulary: scene attributes, question words and answers.

Token ids are positions in WORDS. The bundle's tokenizer.json is built from this exact list (in this
order) so the ids the training code writes directly equal the ids the WordPiece tokenizer produces;
`tools/model/export.py` checks that before it writes a bundle.
"""

SPECIALS = ["[PAD]", "[UNK]", "<s>", "</s>", "<image>"]
PAD, UNK, BOS, EOS, IMAGE = range(5)

COLORS = ["red", "green", "blue", "yellow", "purple", "cyan"]
# sRGB 0-255, saturated so they stand apart from the desaturated backgrounds.
COLOR_RGB = [
    (215, 40, 40),
    (40, 170, 60),
    (45, 85, 220),
    (235, 210, 45),
    (145, 60, 190),
    (40, 200, 210),
]
SHAPES = ["circle", "square", "triangle", "diamond", "cross"]
SHAPE_PLURALS = ["circles", "squares", "triangles", "diamonds", "crosses"]
SIZES = ["small", "large"]
NUMBERS = ["zero", "one", "two", "three", "four", "five", "six"]
YES_NO = ["yes", "no"]

# Prompt frame words: the template is "USER: <image>\n{question} ASSISTANT:".
FRAME = ["user", "assistant", ":", "?"]  # the tokenizer lowercases "USER:" / "ASSISTANT:"
QUESTION_WORDS = [
    "what", "color", "is", "the", "shape", "object", "size", "there", "a", "how", "many",
    "objects", "are", "left", "right", "of", "above", "below", "larger", "smaller", "than",
]

WORDS = SPECIALS + FRAME + QUESTION_WORDS + COLORS + SHAPES + SHAPE_PLURALS + SIZES + NUMBERS + YES_NO
assert len(set(WORDS)) == len(WORDS), "duplicate vocabulary word"
ID = {w: i for i, w in enumerate(WORDS)}

COLOR_IDS = [ID[w] for w in COLORS]
SHAPE_IDS = [ID[w] for w in SHAPES]
PLURAL_IDS = [ID[w] for w in SHAPE_PLURALS]
SIZE_IDS = [ID[w] for w in SIZES]
NUMBER_IDS = [ID[w] for w in NUMBERS]
YES, NO = ID["yes"], ID["no"]

PROMPT_TEMPLATE = "USER: <image>\n{question} ASSISTANT:"
PREFIX_IDS = [BOS, ID["user"], ID[":"]]  # [<s>] + tok("USER:")

# Question types, in the order the committed eval set interleaves them.
QUESTION_TYPES = ["color", "shape", "size", "exist", "count", "relation", "compare"]


def decode(ids):
    """Word ids to the text a WordPiece decoder would print (space-joined words)."""
    return " ".join(WORDS[i] for i in ids)


def question_text(ids):
    """Question word ids (no frame) to the question string fed to the tokenizer."""
    text = " ".join(WORDS[i] for i in ids)
    return text.replace(" ?", "?")
