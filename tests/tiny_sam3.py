"""A tiny SAM3 image model built from the `sam3` package's own classes, for CPU tests.

Same architecture and module names as `sam3.model_builder.build_sam3_image_model`, with
the widths and depths cut down: ViT 64-d x 2 layers, text 64-d x 1 layer, 1 encoder layer,
2 decoder layers; d_model 256 and 200 queries stay (the heads assume them). About 20M
parameters; at 224 px the feature grid is 16x16 and the masks 64x64.

The vision position encoding and the decoder are built with the same precompute and
`resolution`/`stride` arguments as the real builder, so the CUDA-only spots that
`engine.sources.sam3.compat` fixes are exercised here too. Like the package's builder it needs
`engine.sources.sam3.compat.apply_cpu_compat()` to have run first on a CPU-only machine;
`load_sam3_model(..., model_factory=build_tiny_sam3)` and `build_random_sam3_model` do that.
"""

from __future__ import annotations

from pathlib import Path

import torch

TINY_SIDE = 224
PATCH = 14


def build_tiny_sam3(bpe_path: str | Path, image_size: int = TINY_SIDE) -> torch.nn.Module:
    """Random-weight tiny Sam3Image (eval mode, CPU). `image_size` must be a multiple of 14.

    The text encoder's `torch.empty` parameters are left as the package leaves them.
    """
    assert image_size % PATCH == 0, f"image_size must be a multiple of {PATCH}, got {image_size}"
    from sam3.model.decoder import TransformerDecoder, TransformerDecoderLayer
    from sam3.model.encoder import TransformerEncoderFusion, TransformerEncoderLayer
    from sam3.model.geometry_encoders import SequenceGeometryEncoder
    from sam3.model.maskformer_segmentation import PixelDecoder, UniversalSegmentationHead
    from sam3.model.model_misc import MLP, DotProductScoring, TransformerWrapper
    from sam3.model.model_misc import MultiheadAttentionWrapper as MultiheadAttention
    from sam3.model.necks import Sam3DualViTDetNeck
    from sam3.model.position_encoding import PositionEmbeddingSine
    from sam3.model.sam3_image import Sam3Image
    from sam3.model.text_encoder_ve import VETextEncoder
    from sam3.model.tokenizer_ve import SimpleTokenizer
    from sam3.model.vitdet import ViT
    from sam3.model.vl_combiner import SAM3VLBackbone
    from torch import nn

    d = 256
    ffn = 256

    def pos_enc(precompute=None):
        return PositionEmbeddingSine(num_pos_feats=d, normalize=True, temperature=10000, precompute_resolution=precompute)

    vit = ViT(
        img_size=image_size, pretrain_img_size=image_size, patch_size=PATCH, embed_dim=64, depth=2, num_heads=2,
        mlp_ratio=4.0, norm_layer="LayerNorm", drop_path_rate=0.0, qkv_bias=True, use_abs_pos=True,
        tile_abs_pos=True, global_att_blocks=(1,), rel_pos_blocks=(), use_rope=True, use_interp_rope=True,
        window_size=8, pretrain_use_cls_token=True, retain_cls_token=False, ln_pre=True, ln_post=False,
        return_interm_layers=False, bias_patch_embed=False,
    )
    neck = Sam3DualViTDetNeck(position_encoding=pos_enc(image_size), d_model=d, scale_factors=[4.0, 2.0, 1.0, 0.5],
                              trunk=vit, add_sam2_neck=False)
    text = VETextEncoder(tokenizer=SimpleTokenizer(bpe_path=str(bpe_path)), d_model=d, width=64, heads=2, layers=1)
    backbone = SAM3VLBackbone(visual=neck, text=text, scalp=1)

    def mha(batch_first, dropout=0.0):
        return MultiheadAttention(num_heads=8, dropout=dropout, embed_dim=d, batch_first=batch_first)

    enc_layer = TransformerEncoderLayer(
        activation="relu", d_model=d, dim_feedforward=ffn, dropout=0.0, pos_enc_at_attn=True,
        pos_enc_at_cross_attn_keys=False, pos_enc_at_cross_attn_queries=False, pre_norm=True,
        self_attention=mha(True), cross_attention=mha(True),
    )
    encoder = TransformerEncoderFusion(
        layer=enc_layer, num_layers=1, d_model=d, num_feature_levels=1, frozen=False, use_act_checkpoint=False,
        add_pooled_text_to_img_feat=False, pool_text_with_mask=True,
    )
    dec_layer = TransformerDecoderLayer(
        activation="relu", d_model=d, dim_feedforward=ffn, dropout=0.0,
        cross_attention=MultiheadAttention(num_heads=8, dropout=0.0, embed_dim=d), n_heads=8,
        use_text_cross_attention=True,
    )
    decoder = TransformerDecoder(
        layer=dec_layer, num_layers=2, num_queries=200, return_intermediate=True, box_refine=True,
        num_o2m_queries=0, dac=True, boxRPB="log", d_model=d, frozen=False, interaction_layer=None,
        dac_use_selfatt_ln=True, resolution=image_size, stride=PATCH, use_act_checkpoint=False,
        presence_token=True,
    )
    transformer = TransformerWrapper(encoder=encoder, decoder=decoder, d_model=d)
    scoring = DotProductScoring(
        d_model=d, d_proj=d,
        prompt_mlp=MLP(input_dim=d, hidden_dim=ffn, output_dim=d, num_layers=2, dropout=0.0, residual=True,
                       out_norm=nn.LayerNorm(d)),
    )
    seg_head = UniversalSegmentationHead(
        hidden_dim=d, upsampling_stages=3, aux_masks=False, presence_head=False, dot_product_scorer=None,
        act_ckpt=False, cross_attend_prompt=MultiheadAttention(num_heads=8, dropout=0, embed_dim=d),
        pixel_decoder=PixelDecoder(num_upsampling_stages=3, interpolation_mode="nearest", hidden_dim=d),
    )
    geo_layer = TransformerEncoderLayer(
        activation="relu", d_model=d, dim_feedforward=ffn, dropout=0.0, pos_enc_at_attn=False, pre_norm=True,
        self_attention=mha(False), pos_enc_at_cross_attn_queries=False, pos_enc_at_cross_attn_keys=True,
        cross_attention=mha(False),
    )
    geometry = SequenceGeometryEncoder(
        pos_enc=pos_enc(), encode_boxes_as_points=False, points_direct_project=True, points_pool=True,
        points_pos_enc=True, boxes_direct_project=True, boxes_pool=True, boxes_pos_enc=True, d_model=d,
        num_layers=1, layer=geo_layer, use_act_ckpt=False, add_cls=True, add_post_encode_proj=True,
        mask_encoder=None,
    )
    model = Sam3Image(
        backbone=backbone, transformer=transformer, input_geometry_encoder=geometry, segmentation_head=seg_head,
        num_feature_levels=1, o2m_mask_predict=True, dot_prod_scoring=scoring, use_instance_query=False,
        multimask_output=True, inst_interactive_predictor=None, matcher=None,
    )
    return model.eval()
