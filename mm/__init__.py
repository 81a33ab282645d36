"""mm: multimodal transfer learning on pretrained text, image and audio backbones."""

__version__ = "0.1.0"
