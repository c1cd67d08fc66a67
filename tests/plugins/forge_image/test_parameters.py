"""Every Forge parameter reaches the server in the txt2img body, per request and as a
settings default; an empty name asks for the server's own default."""

from __future__ import annotations

import io
from typing import Any

import pytest
from PIL import Image

from core.protocols import ImageRequest
from plugins.forge_image.placeholder import PLACEHOLDER_KEY, placeholder_png
from tests.forge_standin import CHECKPOINTS, ForgeStandIn


async def test_every_parameter_reaches_the_server(forge: ForgeStandIn,
                                                  make_generator: Any) -> None:
    generator = make_generator(forge.url)
    request = ImageRequest(prompt="p", negative_prompt="n", width=64, height=96, steps=3,
                           seed=11, sampler="Euler", scheduler="karras",
                           checkpoint="dream-v2", cfg_scale=1.0, distilled_cfg_scale=3.5)
    assert not (await generator.generate(request)).placeholder
    sent = forge.last_payload
    assert {k: sent[k] for k in ("prompt", "negative_prompt", "width", "height", "steps",
                                 "seed", "sampler_name", "scheduler", "cfg_scale",
                                 "distilled_cfg_scale")} == {
        "prompt": "p", "negative_prompt": "n", "width": 64, "height": 96, "steps": 3,
        "seed": 11, "sampler_name": "Euler", "scheduler": "karras", "cfg_scale": 1.0,
        "distilled_cfg_scale": 3.5}
    assert sent["override_settings"] == {"sd_model_checkpoint": "dream-v2"}
    assert sent["override_settings_restore_afterwards"] is True
    assert forge.options["sd_model_checkpoint"] == CHECKPOINTS[0]
    await generator.aclose()


async def test_settings_defaults_and_server_defaults(forge: ForgeStandIn,
                                                     make_generator: Any) -> None:
    generator = make_generator(forge.url, sampler="DPM++ 2M", scheduler="simple",
                               checkpoint="dream-v2", cfg_scale=1.0, distilled_cfg_scale=3.0)
    await generator.generate(ImageRequest(prompt="defaults", width=64, height=64))
    sent = forge.last_payload
    assert (sent["sampler_name"], sent["scheduler"], sent["cfg_scale"],
            sent["distilled_cfg_scale"]) == ("DPM++ 2M", "simple", 1.0, 3.0)
    assert sent["override_settings"] == {"sd_model_checkpoint": "dream-v2"}

    await generator.generate(ImageRequest(prompt="server's own", width=64, height=64,
                                          sampler="", scheduler="", checkpoint=""))
    sent = forge.last_payload
    assert not {"sampler_name", "scheduler", "override_settings"} & set(sent)
    await generator.aclose()

    bare = make_generator(forge.url)
    await bare.generate(ImageRequest(prompt="bare", width=64, height=64))
    assert not {"sampler_name", "scheduler", "cfg_scale", "distilled_cfg_scale",
                "override_settings"} & set(forge.last_payload)
    await bare.aclose()


@pytest.mark.parametrize(("table", "message"), [
    ({"cfg_scale": 99}, r"\[plugins.forge-image\] cfg_scale: must be from 1 to 30"),
    ({"distilled_cfg_scale": -1}, r"distilled_cfg_scale: must be from 0 to 30"),
    ({"health_interval": 0}, r"health_interval: must be greater than 0"),
])
def test_bad_new_settings_name_the_key(make_config: Any, table: dict[str, Any],
                                       message: str) -> None:
    from core.errors import ConfigError
    from core.runtime import Runtime

    with pytest.raises(ConfigError, match=message):
        Runtime(make_config(plugins={"forge-image": table}))


def light_share(png: bytes) -> float:
    with Image.open(io.BytesIO(png)) as image:
        grey = image.convert("L")
        histogram = grey.histogram()
        return sum(histogram[200:]) / (grey.width * grey.height)


@pytest.mark.parametrize("size", [(64, 64), (512, 512), (2048, 2048), (2048, 64), (64, 2048)])
def test_placeholder_has_the_requested_size(size: tuple[int, int]) -> None:
    png = placeholder_png("out_of_memory", *size)
    with Image.open(io.BytesIO(png)) as image:
        assert image.size == size and image.info[PLACEHOLDER_KEY] == "out_of_memory"


def test_placeholder_text_scales_with_the_image() -> None:
    """The text covers a similar share of a small and a large image (a fixed tiny font
    would shrink to a speck on a 2048 px placeholder)."""
    small, large = (light_share(placeholder_png("timed_out", s, s)) for s in (512, 2048))
    assert small > 0.005 and 0.5 < large / small < 2.0
