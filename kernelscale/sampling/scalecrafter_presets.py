"""ScaleCrafter's published re-dilation settings, as data (DESIGN §10).

Copied verbatim from github.com/YingqingHe/ScaleCrafter at commit 9dc1185 (configs/<name>.yaml for
the step counts, assets/dilate_settings/<name>.txt and assets/ndcfg_dilate_settings/<name>.txt for
the per-layer factors, one ``layer:factor`` per line). Steps are indices of their 50-step DDIM
sampling (leading spacing, steps_offset 1: step i is timestep 981 − 20·i).

``absent_in_model`` lists the names a published file gives that the model it was published for
does not have. ScaleCrafter's own loop matches names against ``unet.named_modules()`` and ignores
such names without a word; the SDXL files list them (SDXL's UNet has down_blocks.0–2 and
up_blocks.0–2 only, and neither down_blocks.2.downsamplers nor up_blocks.2.upsamplers: the layer
list of FouriScale's assets/layer_settings/all_valid_convs_xl.txt, github.com/LeonHLJ/FouriScale at
6fb392e, and diffusers' SDXL UNet config). kernelscale.sampling.presets drops exactly these names
and refuses any other name that matches no layer.
"""

SOURCE = "https://github.com/YingqingHe/ScaleCrafter/tree/9dc1185"

SCALECRAFTER_PRESETS = {
    "sd1.5-1024x1024": {
        "model": "sd1.5",
        "height": 1024,
        "width": 1024,
        "latent_height": 128,
        "latent_width": 128,
        "num_inference_steps": 50,
        "dilate_tau": 30,
        "ndcfg_tau": 0,
        "progressive": False,
        "source": "configs/sd1.5_1024x1024.yaml, assets/dilate_settings/sd1.5_1024x1024.txt",
        "dilate_settings": """\
down_blocks.1.resnets.0.conv1:2
down_blocks.1.resnets.0.conv2:2
down_blocks.1.resnets.1.conv1:2
down_blocks.1.resnets.1.conv2:2
down_blocks.1.downsamplers.0.conv:2
down_blocks.2.resnets.0.conv1:2
down_blocks.2.resnets.0.conv2:2
down_blocks.2.resnets.1.conv1:2
down_blocks.2.resnets.1.conv2:2
down_blocks.2.downsamplers.0.conv:2
down_blocks.3.resnets.0.conv1:2
down_blocks.3.resnets.0.conv2:2
down_blocks.3.resnets.1.conv1:2
down_blocks.3.resnets.1.conv2:2
up_blocks.0.resnets.0.conv1:2
up_blocks.0.resnets.0.conv2:2
up_blocks.0.resnets.1.conv1:2
up_blocks.0.resnets.1.conv2:2
up_blocks.0.resnets.2.conv1:2
up_blocks.0.resnets.2.conv2:2
up_blocks.0.upsamplers.0.conv:2
up_blocks.1.resnets.0.conv1:2
up_blocks.1.resnets.0.conv2:2
up_blocks.1.resnets.1.conv1:2
up_blocks.1.resnets.1.conv2:2
up_blocks.1.resnets.2.conv1:2
up_blocks.1.resnets.2.conv2:2
up_blocks.1.upsamplers.0.conv:2
up_blocks.2.resnets.0.conv1:2
up_blocks.2.resnets.0.conv2:2
up_blocks.2.resnets.1.conv1:2
up_blocks.2.resnets.1.conv2:2
up_blocks.2.resnets.2.conv1:2
up_blocks.2.resnets.2.conv2:2
up_blocks.2.upsamplers.0.conv:2
mid_block.resnets.0.conv1:2
mid_block.resnets.0.conv2:2
mid_block.resnets.1.conv1:2
mid_block.resnets.1.conv2:2
""",
        "ndcfg_dilate_settings": None,
        "absent_in_model": (),
    },
    "sd1.5-1280x1280": {
        "model": "sd1.5",
        "height": 1280,
        "width": 1280,
        "latent_height": 160,
        "latent_width": 160,
        "num_inference_steps": 50,
        "dilate_tau": 35,
        "ndcfg_tau": 0,
        "progressive": False,
        "source": "configs/sd1.5_1280x1280.yaml, assets/dilate_settings/sd1.5_1280x1280.txt",
        "dilate_settings": """\
down_blocks.1.resnets.0.conv1:2.5
down_blocks.1.resnets.0.conv2:2.5
down_blocks.1.resnets.1.conv1:2.5
down_blocks.1.resnets.1.conv2:2.5
down_blocks.1.downsamplers.0.conv:2.5
down_blocks.2.resnets.0.conv1:2.5
down_blocks.2.resnets.0.conv2:2.5
down_blocks.2.resnets.1.conv1:2.5
down_blocks.2.resnets.1.conv2:2.5
down_blocks.2.downsamplers.0.conv:2.5
down_blocks.3.resnets.0.conv1:2.5
down_blocks.3.resnets.0.conv2:2.5
down_blocks.3.resnets.1.conv1:2.5
down_blocks.3.resnets.1.conv2:2.5
up_blocks.0.resnets.0.conv1:2.5
up_blocks.0.resnets.0.conv2:2.5
up_blocks.0.resnets.1.conv1:2.5
up_blocks.0.resnets.1.conv2:2.5
up_blocks.0.resnets.2.conv1:2.5
up_blocks.0.resnets.2.conv2:2.5
up_blocks.0.upsamplers.0.conv:2.5
up_blocks.1.resnets.0.conv1:2.5
up_blocks.1.resnets.0.conv2:2.5
up_blocks.1.resnets.1.conv1:2.5
up_blocks.1.resnets.1.conv2:2.5
up_blocks.1.resnets.2.conv1:2.5
up_blocks.1.resnets.2.conv2:2.5
up_blocks.1.upsamplers.0.conv:2.5
up_blocks.2.resnets.0.conv1:2.5
up_blocks.2.resnets.0.conv2:2.5
up_blocks.2.resnets.1.conv1:2.5
up_blocks.2.resnets.1.conv2:2.5
up_blocks.2.resnets.2.conv1:2.5
up_blocks.2.resnets.2.conv2:2.5
up_blocks.2.upsamplers.0.conv:2.5
mid_block.resnets.0.conv1:2.5
mid_block.resnets.0.conv2:2.5
mid_block.resnets.1.conv1:2.5
mid_block.resnets.1.conv2:2.5
""",
        "ndcfg_dilate_settings": None,
        "absent_in_model": (),
    },
    "sd1.5-2048x1024": {
        "model": "sd1.5",
        "height": 1024,
        "width": 2048,
        "latent_height": 128,
        "latent_width": 256,
        "num_inference_steps": 50,
        "dilate_tau": 35,
        "ndcfg_tau": 35,
        "progressive": True,
        "source": "configs/sd1.5_2048x1024.yaml, assets/dilate_settings/sd1.5_2048x1024.txt, assets/ndcfg_dilate_settings/sd1.5_2048x1024.txt",
        "dilate_settings": """\
down_blocks.1.resnets.0.conv1:2
down_blocks.1.resnets.0.conv2:2
down_blocks.1.resnets.1.conv1:2
down_blocks.1.resnets.1.conv2:2
down_blocks.1.downsamplers.0.conv:2
down_blocks.2.resnets.0.conv1:3
down_blocks.2.resnets.0.conv2:3
down_blocks.2.resnets.1.conv1:3
down_blocks.2.resnets.1.conv2:3
down_blocks.2.downsamplers.0.conv:3
down_blocks.3.resnets.0.conv1:4
down_blocks.3.resnets.0.conv2:4
down_blocks.3.resnets.1.conv1:4
down_blocks.3.resnets.1.conv2:4
up_blocks.0.resnets.0.conv1:4
up_blocks.0.resnets.0.conv2:4
up_blocks.0.resnets.1.conv1:4
up_blocks.0.resnets.1.conv2:4
up_blocks.0.resnets.2.conv1:4
up_blocks.0.resnets.2.conv2:4
up_blocks.0.upsamplers.0.conv:4
up_blocks.1.resnets.0.conv1:3
up_blocks.1.resnets.0.conv2:3
up_blocks.1.resnets.1.conv1:3
up_blocks.1.resnets.1.conv2:3
up_blocks.1.resnets.2.conv1:3
up_blocks.1.resnets.2.conv2:3
up_blocks.1.upsamplers.0.conv:3
up_blocks.2.resnets.0.conv1:2
up_blocks.2.resnets.0.conv2:2
up_blocks.2.resnets.1.conv1:2
up_blocks.2.resnets.1.conv2:2
up_blocks.2.resnets.2.conv1:2
up_blocks.2.resnets.2.conv2:2
up_blocks.2.upsamplers.0.conv:2
mid_block.resnets.0.conv1:4
mid_block.resnets.0.conv2:4
mid_block.resnets.1.conv1:4
mid_block.resnets.1.conv2:4
""",
        "ndcfg_dilate_settings": """\
down_blocks.2.resnets.0.conv1:3
down_blocks.2.resnets.0.conv2:3
down_blocks.2.resnets.1.conv1:3
down_blocks.2.resnets.1.conv2:3
down_blocks.2.downsamplers.0.conv:3
down_blocks.3.resnets.0.conv1:4
down_blocks.3.resnets.0.conv2:4
down_blocks.3.resnets.1.conv1:4
down_blocks.3.resnets.1.conv2:4
up_blocks.0.resnets.0.conv1:4
up_blocks.0.resnets.0.conv2:4
up_blocks.0.resnets.1.conv1:4
up_blocks.0.resnets.1.conv2:4
up_blocks.0.resnets.2.conv1:4
up_blocks.0.resnets.2.conv2:4
up_blocks.0.upsamplers.0.conv:4
up_blocks.1.resnets.0.conv1:3
up_blocks.1.resnets.0.conv2:3
up_blocks.1.resnets.1.conv1:3
up_blocks.1.resnets.1.conv2:3
up_blocks.1.resnets.2.conv1:3
up_blocks.1.resnets.2.conv2:3
up_blocks.1.upsamplers.0.conv:3
mid_block.resnets.0.conv1:4
mid_block.resnets.0.conv2:4
mid_block.resnets.1.conv1:4
mid_block.resnets.1.conv2:4
""",
        "absent_in_model": (),
    },
    "sd1.5-2048x2048": {
        "model": "sd1.5",
        "height": 2048,
        "width": 2048,
        "latent_height": 256,
        "latent_width": 256,
        "num_inference_steps": 50,
        "dilate_tau": 35,
        "ndcfg_tau": 35,
        "progressive": True,
        "source": "configs/sd1.5_2048x2048.yaml, assets/dilate_settings/sd1.5_2048x2048.txt, assets/ndcfg_dilate_settings/sd1.5_2048x2048.txt",
        "dilate_settings": """\
down_blocks.1.resnets.0.conv1:2
down_blocks.1.resnets.0.conv2:2
down_blocks.1.resnets.1.conv1:2
down_blocks.1.resnets.1.conv2:2
down_blocks.1.downsamplers.0.conv:2
down_blocks.2.resnets.0.conv1:3
down_blocks.2.resnets.0.conv2:3
down_blocks.2.resnets.1.conv1:3
down_blocks.2.resnets.1.conv2:3
down_blocks.2.downsamplers.0.conv:3
down_blocks.3.resnets.0.conv1:4
down_blocks.3.resnets.0.conv2:4
down_blocks.3.resnets.1.conv1:4
down_blocks.3.resnets.1.conv2:4
up_blocks.0.resnets.0.conv1:4
up_blocks.0.resnets.0.conv2:4
up_blocks.0.resnets.1.conv1:4
up_blocks.0.resnets.1.conv2:4
up_blocks.0.resnets.2.conv1:4
up_blocks.0.resnets.2.conv2:4
up_blocks.0.upsamplers.0.conv:4
up_blocks.1.resnets.0.conv1:3
up_blocks.1.resnets.0.conv2:3
up_blocks.1.resnets.1.conv1:3
up_blocks.1.resnets.1.conv2:3
up_blocks.1.resnets.2.conv1:3
up_blocks.1.resnets.2.conv2:3
up_blocks.1.upsamplers.0.conv:3
up_blocks.2.resnets.0.conv1:2
up_blocks.2.resnets.0.conv2:2
up_blocks.2.resnets.1.conv1:2
up_blocks.2.resnets.1.conv2:2
up_blocks.2.resnets.2.conv1:2
up_blocks.2.resnets.2.conv2:2
up_blocks.2.upsamplers.0.conv:2
mid_block.resnets.0.conv1:4
mid_block.resnets.0.conv2:4
mid_block.resnets.1.conv1:4
mid_block.resnets.1.conv2:4
""",
        "ndcfg_dilate_settings": """\
down_blocks.2.resnets.0.conv1:3
down_blocks.2.resnets.0.conv2:3
down_blocks.2.resnets.1.conv1:3
down_blocks.2.resnets.1.conv2:3
down_blocks.2.downsamplers.0.conv:3
down_blocks.3.resnets.0.conv1:4
down_blocks.3.resnets.0.conv2:4
down_blocks.3.resnets.1.conv1:4
down_blocks.3.resnets.1.conv2:4
up_blocks.0.resnets.0.conv1:4
up_blocks.0.resnets.0.conv2:4
up_blocks.0.resnets.1.conv1:4
up_blocks.0.resnets.1.conv2:4
up_blocks.0.resnets.2.conv1:4
up_blocks.0.resnets.2.conv2:4
up_blocks.0.upsamplers.0.conv:4
up_blocks.1.resnets.0.conv1:3
up_blocks.1.resnets.0.conv2:3
up_blocks.1.resnets.1.conv1:3
up_blocks.1.resnets.1.conv2:3
up_blocks.1.resnets.2.conv1:3
up_blocks.1.resnets.2.conv2:3
up_blocks.1.upsamplers.0.conv:3
mid_block.resnets.0.conv1:4
mid_block.resnets.0.conv2:4
mid_block.resnets.1.conv1:4
mid_block.resnets.1.conv2:4
""",
        "absent_in_model": (),
    },
    "sd2.1-1024x1024": {
        "model": "sd2.1",
        "height": 1024,
        "width": 1024,
        "latent_height": 128,
        "latent_width": 128,
        "num_inference_steps": 50,
        "dilate_tau": 20,
        "ndcfg_tau": 0,
        "progressive": False,
        "source": "configs/sd2.1_1024x1024.yaml, assets/dilate_settings/sd2.1_1024x1024.txt",
        "dilate_settings": """\
down_blocks.1.resnets.0.conv1:2
down_blocks.1.resnets.0.conv2:2
down_blocks.1.resnets.1.conv1:2
down_blocks.1.resnets.1.conv2:2
down_blocks.1.downsamplers.0.conv:2
down_blocks.2.resnets.0.conv1:2
down_blocks.2.resnets.0.conv2:2
down_blocks.2.resnets.1.conv1:2
down_blocks.2.resnets.1.conv2:2
down_blocks.2.downsamplers.0.conv:2
down_blocks.3.resnets.0.conv1:2
down_blocks.3.resnets.0.conv2:2
down_blocks.3.resnets.1.conv1:2
down_blocks.3.resnets.1.conv2:2
up_blocks.0.resnets.0.conv1:2
up_blocks.0.resnets.0.conv2:2
up_blocks.0.resnets.1.conv1:2
up_blocks.0.resnets.1.conv2:2
up_blocks.0.resnets.2.conv1:2
up_blocks.0.resnets.2.conv2:2
up_blocks.0.upsamplers.0.conv:2
up_blocks.1.resnets.0.conv1:2
up_blocks.1.resnets.0.conv2:2
up_blocks.1.resnets.1.conv1:2
up_blocks.1.resnets.1.conv2:2
up_blocks.1.resnets.2.conv1:2
up_blocks.1.resnets.2.conv2:2
up_blocks.1.upsamplers.0.conv:2
up_blocks.2.resnets.0.conv1:2
up_blocks.2.resnets.0.conv2:2
up_blocks.2.resnets.1.conv1:2
up_blocks.2.resnets.1.conv2:2
up_blocks.2.resnets.2.conv1:2
up_blocks.2.resnets.2.conv2:2
up_blocks.2.upsamplers.0.conv:2
mid_block.resnets.0.conv1:2
mid_block.resnets.0.conv2:2
mid_block.resnets.1.conv1:2
mid_block.resnets.1.conv2:2
""",
        "ndcfg_dilate_settings": None,
        "absent_in_model": (),
    },
    "sd2.1-1280x1280": {
        "model": "sd2.1",
        "height": 1280,
        "width": 1280,
        "latent_height": 160,
        "latent_width": 160,
        "num_inference_steps": 50,
        "dilate_tau": 30,
        "ndcfg_tau": 0,
        "progressive": False,
        "source": "configs/sd2.1_1280x1280.yaml, assets/dilate_settings/sd2.1_1280x1280.txt",
        "dilate_settings": """\
down_blocks.1.resnets.0.conv1:2.5
down_blocks.1.resnets.0.conv2:2.5
down_blocks.1.resnets.1.conv1:2.5
down_blocks.1.resnets.1.conv2:2.5
down_blocks.1.downsamplers.0.conv:2.5
down_blocks.2.resnets.0.conv1:2.5
down_blocks.2.resnets.0.conv2:2.5
down_blocks.2.resnets.1.conv1:2.5
down_blocks.2.resnets.1.conv2:2.5
down_blocks.2.downsamplers.0.conv:2.5
down_blocks.3.resnets.0.conv1:2.5
down_blocks.3.resnets.0.conv2:2.5
down_blocks.3.resnets.1.conv1:2.5
down_blocks.3.resnets.1.conv2:2.5
up_blocks.0.resnets.0.conv1:2.5
up_blocks.0.resnets.0.conv2:2.5
up_blocks.0.resnets.1.conv1:2.5
up_blocks.0.resnets.1.conv2:2.5
up_blocks.0.resnets.2.conv1:2.5
up_blocks.0.resnets.2.conv2:2.5
up_blocks.0.upsamplers.0.conv:2.5
up_blocks.1.resnets.0.conv1:2.5
up_blocks.1.resnets.0.conv2:2.5
up_blocks.1.resnets.1.conv1:2.5
up_blocks.1.resnets.1.conv2:2.5
up_blocks.1.resnets.2.conv1:2.5
up_blocks.1.resnets.2.conv2:2.5
up_blocks.1.upsamplers.0.conv:2.5
up_blocks.2.resnets.0.conv1:2.5
up_blocks.2.resnets.0.conv2:2.5
up_blocks.2.resnets.1.conv1:2.5
up_blocks.2.resnets.1.conv2:2.5
up_blocks.2.resnets.2.conv1:2.5
up_blocks.2.resnets.2.conv2:2.5
up_blocks.2.upsamplers.0.conv:2.5
mid_block.resnets.0.conv1:2.5
mid_block.resnets.0.conv2:2.5
mid_block.resnets.1.conv1:2.5
mid_block.resnets.1.conv2:2.5
""",
        "ndcfg_dilate_settings": None,
        "absent_in_model": (),
    },
    "sd2.1-2048x1024": {
        "model": "sd2.1",
        "height": 1024,
        "width": 2048,
        "latent_height": 128,
        "latent_width": 256,
        "num_inference_steps": 50,
        "dilate_tau": 37,
        "ndcfg_tau": 0,
        "progressive": True,
        "source": "configs/sd2.1_2048x1024.yaml, assets/dilate_settings/sd2.1_2048x1024.txt, assets/ndcfg_dilate_settings/sd2.1_2048x1024.txt",
        "dilate_settings": """\
down_blocks.1.resnets.0.conv1:2
down_blocks.1.resnets.0.conv2:2
down_blocks.1.resnets.1.conv1:2
down_blocks.1.resnets.1.conv2:2
down_blocks.1.downsamplers.0.conv:2
down_blocks.2.resnets.0.conv1:3
down_blocks.2.resnets.0.conv2:3
down_blocks.2.resnets.1.conv1:3
down_blocks.2.resnets.1.conv2:3
down_blocks.2.downsamplers.0.conv:3
down_blocks.3.resnets.0.conv1:4
down_blocks.3.resnets.0.conv2:4
down_blocks.3.resnets.1.conv1:4
down_blocks.3.resnets.1.conv2:4
up_blocks.0.resnets.0.conv1:4
up_blocks.0.resnets.0.conv2:4
up_blocks.0.resnets.1.conv1:4
up_blocks.0.resnets.1.conv2:4
up_blocks.0.resnets.2.conv1:4
up_blocks.0.resnets.2.conv2:4
up_blocks.0.upsamplers.0.conv:4
up_blocks.1.resnets.0.conv1:3
up_blocks.1.resnets.0.conv2:3
up_blocks.1.resnets.1.conv1:3
up_blocks.1.resnets.1.conv2:3
up_blocks.1.resnets.2.conv1:3
up_blocks.1.resnets.2.conv2:3
up_blocks.1.upsamplers.0.conv:3
up_blocks.2.resnets.0.conv1:2
up_blocks.2.resnets.0.conv2:2
up_blocks.2.resnets.1.conv1:2
up_blocks.2.resnets.1.conv2:2
up_blocks.2.resnets.2.conv1:2
up_blocks.2.resnets.2.conv2:2
up_blocks.2.upsamplers.0.conv:2
mid_block.resnets.0.conv1:4
mid_block.resnets.0.conv2:4
mid_block.resnets.1.conv1:4
mid_block.resnets.1.conv2:4
""",
        "ndcfg_dilate_settings": """\
down_blocks.2.resnets.0.conv1:3
down_blocks.2.resnets.0.conv2:3
down_blocks.2.resnets.1.conv1:3
down_blocks.2.resnets.1.conv2:3
down_blocks.2.downsamplers.0.conv:4
down_blocks.3.resnets.0.conv1:4
down_blocks.3.resnets.0.conv2:4
down_blocks.3.resnets.1.conv1:4
down_blocks.3.resnets.1.conv2:4
up_blocks.0.resnets.0.conv1:4
up_blocks.0.resnets.0.conv2:4
up_blocks.0.resnets.1.conv1:4
up_blocks.0.resnets.1.conv2:4
up_blocks.0.resnets.2.conv1:4
up_blocks.0.resnets.2.conv2:4
up_blocks.0.upsamplers.0.conv:4
up_blocks.1.resnets.0.conv1:4
up_blocks.1.resnets.0.conv2:4
up_blocks.1.resnets.1.conv1:4
up_blocks.1.resnets.1.conv2:4
up_blocks.1.resnets.2.conv1:4
up_blocks.1.resnets.2.conv2:4
up_blocks.1.upsamplers.0.conv:4
up_blocks.2.resnets.0.conv1:3
up_blocks.2.resnets.0.conv2:3
up_blocks.2.resnets.1.conv1:3
up_blocks.2.resnets.1.conv2:3
up_blocks.2.resnets.2.conv1:3
up_blocks.2.resnets.2.conv2:3
up_blocks.2.upsamplers.0.conv:3
mid_block.resnets.0.conv1:4
mid_block.resnets.0.conv2:4
mid_block.resnets.1.conv1:4
mid_block.resnets.1.conv2:4
""",
        "absent_in_model": (),
    },
    "sd2.1-2048x2048": {
        "model": "sd2.1",
        "height": 2048,
        "width": 2048,
        "latent_height": 256,
        "latent_width": 256,
        "num_inference_steps": 50,
        "dilate_tau": 37,
        "ndcfg_tau": 37,
        "progressive": True,
        "source": "configs/sd2.1_2048x2048.yaml, assets/dilate_settings/sd2.1_2048x2048.txt, assets/ndcfg_dilate_settings/sd2.1_2048x2048.txt",
        "dilate_settings": """\
down_blocks.2.resnets.0.conv1:3
down_blocks.2.resnets.0.conv2:3
down_blocks.2.resnets.1.conv1:3
down_blocks.2.resnets.1.conv2:3
down_blocks.2.downsamplers.0.conv:4
down_blocks.3.resnets.0.conv1:4
down_blocks.3.resnets.0.conv2:4
down_blocks.3.resnets.1.conv1:4
down_blocks.3.resnets.1.conv2:4
up_blocks.0.resnets.0.conv1:4
up_blocks.0.resnets.0.conv2:4
up_blocks.0.resnets.1.conv1:4
up_blocks.0.resnets.1.conv2:4
up_blocks.0.resnets.2.conv1:4
up_blocks.0.resnets.2.conv2:4
up_blocks.0.upsamplers.0.conv:4
up_blocks.1.resnets.0.conv1:4
up_blocks.1.resnets.0.conv2:4
up_blocks.1.resnets.1.conv1:4
up_blocks.1.resnets.1.conv2:4
up_blocks.1.resnets.2.conv1:4
up_blocks.1.resnets.2.conv2:4
up_blocks.1.upsamplers.0.conv:4
up_blocks.2.resnets.0.conv1:3
up_blocks.2.resnets.0.conv2:3
up_blocks.2.resnets.1.conv1:3
up_blocks.2.resnets.1.conv2:3
up_blocks.2.resnets.2.conv1:3
up_blocks.2.resnets.2.conv2:3
up_blocks.2.upsamplers.0.conv:3
up_blocks.3.resnets.0.conv1:2
up_blocks.3.resnets.0.conv2:2
up_blocks.3.resnets.1.conv1:2
up_blocks.3.resnets.1.conv2:2
up_blocks.3.resnets.2.conv1:2
up_blocks.3.resnets.2.conv2:2
mid_block.resnets.0.conv1:4
mid_block.resnets.0.conv2:4
mid_block.resnets.1.conv1:4
mid_block.resnets.1.conv2:4
""",
        "ndcfg_dilate_settings": """\
down_blocks.2.resnets.0.conv1:3
down_blocks.2.resnets.0.conv2:3
down_blocks.2.resnets.1.conv1:3
down_blocks.2.resnets.1.conv2:3
down_blocks.2.downsamplers.0.conv:4
down_blocks.3.resnets.0.conv1:4
down_blocks.3.resnets.0.conv2:4
down_blocks.3.resnets.1.conv1:4
down_blocks.3.resnets.1.conv2:4
up_blocks.0.resnets.0.conv1:4
up_blocks.0.resnets.0.conv2:4
up_blocks.0.resnets.1.conv1:4
up_blocks.0.resnets.1.conv2:4
up_blocks.0.resnets.2.conv1:4
up_blocks.0.resnets.2.conv2:4
up_blocks.0.upsamplers.0.conv:4
up_blocks.1.resnets.0.conv1:4
up_blocks.1.resnets.0.conv2:4
up_blocks.1.resnets.1.conv1:4
up_blocks.1.resnets.1.conv2:4
up_blocks.1.resnets.2.conv1:4
up_blocks.1.resnets.2.conv2:4
up_blocks.1.upsamplers.0.conv:4
up_blocks.2.resnets.0.conv1:3
up_blocks.2.resnets.0.conv2:3
up_blocks.2.resnets.1.conv1:3
up_blocks.2.resnets.1.conv2:3
up_blocks.2.resnets.2.conv1:3
up_blocks.2.resnets.2.conv2:3
up_blocks.2.upsamplers.0.conv:3
mid_block.resnets.0.conv1:4
mid_block.resnets.0.conv2:4
mid_block.resnets.1.conv1:4
mid_block.resnets.1.conv2:4
""",
        "absent_in_model": (),
    },
    "sdxl-2048x2048": {
        "model": "sdxl",
        "height": 2048,
        "width": 2048,
        "latent_height": 256,
        "latent_width": 256,
        "num_inference_steps": 50,
        "dilate_tau": 30,
        "ndcfg_tau": 0,
        "progressive": False,
        "source": "configs/sdxl_2048x2048.yaml, assets/dilate_settings/sdxl_2048x2048.txt",
        "dilate_settings": """\
down_blocks.3.resnets.0.conv1:2
down_blocks.3.resnets.0.conv2:2
down_blocks.3.resnets.1.conv1:2
down_blocks.3.resnets.1.conv2:2
up_blocks.0.resnets.0.conv1:2
up_blocks.0.resnets.0.conv2:2
up_blocks.0.resnets.1.conv1:2
up_blocks.0.resnets.1.conv2:2
up_blocks.0.resnets.2.conv1:2
up_blocks.0.resnets.2.conv2:2
up_blocks.0.upsamplers.0.conv:2
mid_block.resnets.0.conv1:2
mid_block.resnets.0.conv2:2
mid_block.resnets.1.conv1:2
mid_block.resnets.1.conv2:2
""",
        "ndcfg_dilate_settings": None,
        "absent_in_model": ("down_blocks.3.resnets.0.conv1", "down_blocks.3.resnets.0.conv2", "down_blocks.3.resnets.1.conv1", "down_blocks.3.resnets.1.conv2", ),
    },
    "sdxl-2560x2560": {
        "model": "sdxl",
        "height": 2560,
        "width": 2560,
        "latent_height": 320,
        "latent_width": 320,
        "num_inference_steps": 50,
        "dilate_tau": 30,
        "ndcfg_tau": 0,
        "progressive": False,
        "source": "configs/sdxl_2560x2560.yaml, assets/dilate_settings/sdxl_2560x2560.txt",
        "dilate_settings": """\
down_blocks.3.resnets.0.conv1:2.5
down_blocks.3.resnets.0.conv2:2.5
down_blocks.3.resnets.1.conv1:2.5
down_blocks.3.resnets.1.conv2:2.5
up_blocks.0.resnets.0.conv1:2.5
up_blocks.0.resnets.0.conv2:2.5
up_blocks.0.resnets.1.conv1:2.5
up_blocks.0.resnets.1.conv2:2.5
up_blocks.0.resnets.2.conv1:2.5
up_blocks.0.resnets.2.conv2:2.5
up_blocks.0.upsamplers.0.conv:2.5
mid_block.resnets.0.conv1:2.5
mid_block.resnets.0.conv2:2.5
mid_block.resnets.1.conv1:2.5
mid_block.resnets.1.conv2:2.5
""",
        "ndcfg_dilate_settings": None,
        "absent_in_model": ("down_blocks.3.resnets.0.conv1", "down_blocks.3.resnets.0.conv2", "down_blocks.3.resnets.1.conv1", "down_blocks.3.resnets.1.conv2", ),
    },
    "sdxl-4096x2048": {
        "model": "sdxl",
        "height": 2048,
        "width": 4096,
        "latent_height": 256,
        "latent_width": 512,
        "num_inference_steps": 50,
        "dilate_tau": 35,
        "ndcfg_tau": 35,
        "progressive": True,
        "source": "configs/sdxl_4096x2048.yaml, assets/dilate_settings/sdxl_4096x2048.txt, assets/ndcfg_dilate_settings/sdxl_4096x2048.txt",
        "dilate_settings": """\
down_blocks.2.resnets.0.conv1:3
down_blocks.2.resnets.0.conv2:3
down_blocks.2.resnets.1.conv1:3
down_blocks.2.resnets.1.conv2:3
down_blocks.2.downsamplers.0.conv:3
down_blocks.3.resnets.0.conv1:4
down_blocks.3.resnets.0.conv2:4
down_blocks.3.resnets.1.conv1:4
down_blocks.3.resnets.1.conv2:4
up_blocks.0.resnets.0.conv1:4
up_blocks.0.resnets.0.conv2:4
up_blocks.0.resnets.1.conv1:4
up_blocks.0.resnets.1.conv2:4
up_blocks.0.resnets.2.conv1:4
up_blocks.0.resnets.2.conv2:4
up_blocks.0.upsamplers.0.conv:4
up_blocks.1.resnets.0.conv1:3
up_blocks.1.resnets.0.conv2:3
up_blocks.1.resnets.1.conv1:3
up_blocks.1.resnets.1.conv2:3
up_blocks.1.resnets.2.conv1:3
up_blocks.1.resnets.2.conv2:3
up_blocks.1.upsamplers.0.conv:3
up_blocks.2.resnets.0.conv1:2
up_blocks.2.resnets.0.conv2:2
up_blocks.2.resnets.1.conv1:2
up_blocks.2.resnets.1.conv2:2
up_blocks.2.resnets.2.conv1:2
up_blocks.2.resnets.2.conv2:2
up_blocks.2.upsamplers.0.conv:2
mid_block.resnets.0.conv1:4
mid_block.resnets.0.conv2:4
mid_block.resnets.1.conv1:4
mid_block.resnets.1.conv2:4
""",
        "ndcfg_dilate_settings": """\
down_blocks.3.resnets.0.conv1:2
down_blocks.3.resnets.0.conv2:2
down_blocks.3.resnets.1.conv1:2
down_blocks.3.resnets.1.conv2:2
up_blocks.0.resnets.0.conv1:2
up_blocks.0.resnets.0.conv2:2
up_blocks.0.resnets.1.conv1:2
up_blocks.0.resnets.1.conv2:2
up_blocks.0.resnets.2.conv1:2
up_blocks.0.resnets.2.conv2:2
up_blocks.0.upsamplers.0.conv:2
mid_block.resnets.0.conv1:2
mid_block.resnets.0.conv2:2
mid_block.resnets.1.conv1:2
mid_block.resnets.1.conv2:2
""",
        "absent_in_model": ("down_blocks.2.downsamplers.0.conv", "down_blocks.3.resnets.0.conv1", "down_blocks.3.resnets.0.conv2", "down_blocks.3.resnets.1.conv1", "down_blocks.3.resnets.1.conv2", "up_blocks.2.upsamplers.0.conv", ),
    },
    "sdxl-4096x4096": {
        "model": "sdxl",
        "height": 4096,
        "width": 4096,
        "latent_height": 512,
        "latent_width": 512,
        "num_inference_steps": 50,
        "dilate_tau": 35,
        "ndcfg_tau": 35,
        "progressive": True,
        "source": "configs/sdxl_4096x4096.yaml, assets/dilate_settings/sdxl_4096x4096.txt, assets/ndcfg_dilate_settings/sdxl_4096x4096.txt",
        "dilate_settings": """\
down_blocks.2.resnets.0.conv1:4
down_blocks.2.resnets.0.conv2:4
down_blocks.2.resnets.1.conv1:4
down_blocks.2.resnets.1.conv2:4
down_blocks.2.downsamplers.0.conv:4
down_blocks.3.resnets.0.conv1:4
down_blocks.3.resnets.0.conv2:4
down_blocks.3.resnets.1.conv1:4
down_blocks.3.resnets.1.conv2:4
up_blocks.0.resnets.0.conv1:4
up_blocks.0.resnets.0.conv2:4
up_blocks.0.resnets.1.conv1:4
up_blocks.0.resnets.1.conv2:4
up_blocks.0.resnets.2.conv1:4
up_blocks.0.resnets.2.conv2:4
up_blocks.0.upsamplers.0.conv:4
up_blocks.1.resnets.0.conv1:3
up_blocks.1.resnets.0.conv2:3
up_blocks.1.resnets.1.conv1:3
up_blocks.1.resnets.1.conv2:3
up_blocks.1.resnets.2.conv1:3
up_blocks.1.resnets.2.conv2:3
up_blocks.1.upsamplers.0.conv:3
up_blocks.2.resnets.0.conv1:2
up_blocks.2.resnets.0.conv2:2
up_blocks.2.resnets.1.conv1:2
up_blocks.2.resnets.1.conv2:2
up_blocks.2.resnets.2.conv1:2
up_blocks.2.resnets.2.conv2:2
up_blocks.2.upsamplers.0.conv:2
mid_block.resnets.0.conv1:4
mid_block.resnets.0.conv2:4
mid_block.resnets.1.conv1:4
mid_block.resnets.1.conv2:4
""",
        "ndcfg_dilate_settings": """\
down_blocks.3.resnets.0.conv1:2
down_blocks.3.resnets.0.conv2:2
down_blocks.3.resnets.1.conv1:2
down_blocks.3.resnets.1.conv2:2
up_blocks.0.resnets.0.conv1:2
up_blocks.0.resnets.0.conv2:2
up_blocks.0.resnets.1.conv1:2
up_blocks.0.resnets.1.conv2:2
up_blocks.0.resnets.2.conv1:2
up_blocks.0.resnets.2.conv2:2
up_blocks.0.upsamplers.0.conv:2
mid_block.resnets.0.conv1:2
mid_block.resnets.0.conv2:2
mid_block.resnets.1.conv1:2
mid_block.resnets.1.conv2:2
""",
        "absent_in_model": ("down_blocks.2.downsamplers.0.conv", "down_blocks.3.resnets.0.conv1", "down_blocks.3.resnets.0.conv2", "down_blocks.3.resnets.1.conv1", "down_blocks.3.resnets.1.conv2", "up_blocks.2.upsamplers.0.conv", ),
    },
}
