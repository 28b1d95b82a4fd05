"""Small builders shared by API tests: images, data URLs, product documents."""

from __future__ import annotations

import base64
import io
import json
import random
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from app.vision.model import OFFLINE_TEST_MODEL

TEST_MODEL = OFFLINE_TEST_MODEL


def product_image(seed: int, size: int = 96, fmt: str = "JPEG") -> bytes:
    """A distinct, textured picture per seed."""
    rng = random.Random(seed)
    image = Image.new("RGB", (size, size), tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x0, y0 = rng.randrange(size), rng.randrange(size)
        x1, y1 = x0 + rng.randrange(8, size // 2), y0 + rng.randrange(8, size // 2)
        colour = tuple(rng.randrange(256) for _ in range(3))
        if rng.random() < 0.5:
            draw.rectangle((x0, y0, x1, y1), fill=colour)
        else:
            draw.ellipse((x0, y0, x1, y1), fill=colour)
    out = io.BytesIO()
    image.save(out, fmt)
    return out.getvalue()


def data_url(data: bytes, mime: str = "image/jpeg") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def product(product_id: str, image_url: str, **extra: Any) -> dict[str, Any]:
    doc = {
        "_id": product_id,
        "productTitle": f"Product {product_id}",
        "price": 10.0,
        "variantImageUrl": image_url,
    }
    doc.update(extra)
    return doc


def tokenizer_files(directory: Path) -> dict[str, Path]:
    """A small SentencePiece-style (Unigram) tokenizer in Hugging Face's files, as SigLIP's repo has."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.Unigram())
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    specials = ["<pad>", "</s>", "<unk>"]
    trainer = trainers.UnigramTrainer(vocab_size=60, special_tokens=specials, unk_token="<unk>")
    tokenizer.train_from_iterator(["red leather shoe", "blue cotton shirt", "green wool hat", "black boot"], trainer)
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(directory / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "pad_token": "<pad>", "eos_token": "</s>"}
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    return {name: directory / name for name in ("tokenizer.json", "tokenizer_config.json")}
