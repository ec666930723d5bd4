"""Writer checks that need no onnxruntime (Python only; CI runs the TypeScript side).

    python3 -m unittest tools.bundle.test_writer
"""

from __future__ import annotations

import copy
import json
import tempfile
import unittest
from pathlib import Path

import numpy as np
import onnx

from . import make_random
from .config import BundleError
from .tokenizer import build_wordpiece_tokenizer, encode_wordpiece, tokenizer_vocab_size
from .writer import content_hash, write_bundle


def _inputs():
    tokenizer = build_wordpiece_tokenizer(make_random.WORDS)
    cfg = make_random.random_config(-(-tokenizer_vocab_size(tokenizer) // 8) * 8)
    weights = make_random.random_weights(cfg, np.random.default_rng(0))
    return cfg, weights, tokenizer


class WriterTest(unittest.TestCase):
    def setUp(self):
        self.cfg, self.weights, self.tokenizer = _inputs()
        self.tmp = tempfile.TemporaryDirectory()
        self.out = Path(self.tmp.name) / "bundle"

    def tearDown(self):
        self.tmp.cleanup()

    def write(self, **kw):
        args = dict(config=self.cfg, weights=self.weights, tokenizer_json=self.tokenizer, source={"producer": "test"})
        args.update(kw)
        return write_bundle(self.out, **args)

    def assertBundleError(self, pattern, **kw):
        with self.assertRaisesRegex(BundleError, pattern):
            self.write(**kw)
        self.assertFalse(self.out.exists(), "a failed write leaves nothing behind")

    def test_lists_every_missing_and_misshapen_weight_at_once(self):
        weights = dict(self.weights)
        del weights["language.layers.1.up_proj.weight"], weights["vision.layers.0.fc1.bias"]
        weights["projector.linear1.weight"] = weights["projector.linear1.weight"].T
        with self.assertRaises(BundleError) as err:
            self.write(weights=weights)
        message = str(err.exception)
        for needle in ("missing 2", "language.layers.1.up_proj.weight", "vision.layers.0.fc1.bias",
                       "projector.linear1.weight has shape [32, 48], expected [48, 32]"):
            self.assertIn(needle, message)

    def test_rejects_unknown_names_but_skips_unexported_vision_layers(self):
        self.assertBundleError("unknown 1: language.layers.0.rotary.inv_freq",
                               weights={**self.weights, "language.layers.0.rotary.inv_freq": np.zeros(6)})
        self.assertIn("vision.layers.3.fc1.weight", self.weights)  # trained, not exported
        self.write()

    def test_rejects_inconsistent_config(self):
        cfg = copy.deepcopy(self.cfg)
        cfg["vision"]["num_patches"] = 17
        self.assertBundleError("num_patches is 17 but the other fields imply 16", config=cfg)
        cfg = copy.deepcopy(self.cfg)
        cfg["reduction"]["sparsevlm"]["layers"] = [1, 9]
        self.assertBundleError(r"sparsevlm.layers\[1\] = 9 must be a layer index in 0..3", config=cfg)
        cfg = copy.deepcopy(self.cfg)
        cfg["prompt"]["template"] = "{question} <image>"
        self.assertBundleError("after the image token", config=cfg)

    def test_rejects_weights_outside_float16(self):
        weights = {**self.weights, "language.norm.weight": np.full(48, 1e5, np.float32)}
        self.assertBundleError("float16 range", weights=weights)
        self.write(weights=weights, weight_dtype="float32")

    def test_refuses_to_overwrite_unless_asked(self):
        self.write()
        with self.assertRaisesRegex(BundleError, "overwrite=True"):
            self.write()
        self.write(overwrite=True)

    def test_manifest_hashes_and_schema(self):
        manifest = self.write()
        on_disk = json.loads((self.out / "manifest.json").read_text())
        self.assertEqual(manifest, on_disk)
        self.assertEqual(manifest["content_hash"], content_hash(manifest["files"]))
        self.assertEqual(manifest["source"], {"weight_dtype": "float16", "producer": "test"})
        self.assertEqual(len(manifest["graphs"]), 1 + 3 * 3 + 1 + 1 + 4 * 3 + 1)

    def test_external_data_is_shared_by_attn_and_scores(self):
        manifest = self.write(external_data=True)
        attn = manifest["graphs"]["language/layer_02.attn"]
        self.assertEqual(attn["external_data"], ["language/layer_02.data"])
        self.assertEqual(manifest["graphs"]["language/layer_02.scores"]["external_data"], ["language/layer_02.data"])
        self.assertNotIn("external_data", manifest["graphs"]["language/layer_02.mlp"])
        model = onnx.load(str(self.out / attn["path"]), load_external_data=False)
        locations = {e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"}
        self.assertEqual(locations, {"layer_02.data"})
        onnx.checker.check_model(str(self.out / attn["path"]))
        self.assertEqual(self.write(external_data=False, overwrite=True)["graphs"]["language/layer_02.attn"].get("external_data"), None)

    def test_float16_io_declares_float16_hidden_and_float32_scores(self):
        manifest = self.write(config={**self.cfg, "io_dtype": "float16"})
        dtypes = {t["name"]: t["dtype"] for g in ("language/layer_00.attn", "language/layer_00.scores")
                  for t in manifest["graphs"][g]["inputs"] + manifest["graphs"][g]["outputs"]}
        self.assertEqual(dtypes, {"hidden_in": "float16", "position_ids": "int64", "past_key": "float16",
                                  "past_value": "float16", "attention_mask": "int64", "hidden_out": "float16",
                                  "present_key": "float16", "present_value": "float16", "scores": "float32",
                                  "probs": "float32"})
        self.assertEqual(manifest["graphs"]["vision/embed"]["inputs"][0]["dtype"], "float32")
        self.assertEqual(manifest["graphs"]["language/head"]["outputs"][0]["dtype"], "float32")

    def test_llava_style_vision_tower_without_class_token_or_pre_layernorm(self):
        cfg = copy.deepcopy(self.cfg)
        cfg["vision"].update(class_token=False, activation="gelu")
        weights = {k: v for k, v in self.weights.items() if not k.startswith(("vision.pre_layernorm", "vision.class_embedding"))}
        weights["vision.position_embedding"] = weights["vision.position_embedding"][1:]
        manifest = self.write(config=cfg, weights=weights)
        self.assertEqual(manifest["graphs"]["vision/embed"]["outputs"][0]["shape"], ["B", 16, 32])


class TokenizerTest(unittest.TestCase):
    def test_specials_first_and_punctuation_split(self):
        tok = build_wordpiece_tokenizer(["user", "circle"])
        vocab = tok["model"]["vocab"]
        self.assertEqual([vocab[t] for t in ("[PAD]", "[UNK]", "<s>", "</s>", "<image>", "user", "circle")], list(range(7)))
        ids = encode_wordpiece(tok, "USER: Circles?")
        self.assertEqual(ids, [vocab["user"], vocab[":"], vocab["circle"], vocab["##s"], vocab["?"]])
        self.assertEqual(encode_wordpiece(tok, "naïve"), [vocab["n"], vocab["##a"], vocab["##i"], vocab["##v"], vocab["##e"]])

    def test_rejects_words_the_pre_tokenizer_cannot_produce(self):
        with self.assertRaisesRegex(ValueError, "mixes letters and punctuation"):
            build_wordpiece_tokenizer(["what's"])


if __name__ == "__main__":
    unittest.main()
