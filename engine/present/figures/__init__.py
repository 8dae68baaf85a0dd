"""The paper's per-image figures, drawn from what the sweep hands over (no analysis here).

`draw.draw_image_figures(maps, row, handed, cfg, out_dir)` writes one folder per image,
`out_dir/<image_id>/`, holding the figures below, `figures.json` (the manifest: file,
title, caption and the paper figure each one reproduces) and an `index.html` page.

    encoder_pca               Fig. 1   image | encoder features, PCA -> RGB
    structural_clustering     Fig. 2   encoder clustering, processed | raw (| GT)
    global_clustering         Fig. 3   global DATR clustering, processed | raw
    global_comparison         Fig. 4   image/GT | encoder | global DATR | changed tokens
    class-<p>_clustering      Fig. 5   per prompt: encoder | DATR_p clustering (processed)
    class-<p>_clustering_raw  Fig. 6   the same, raw
    class-<p>_comparison      Fig. 7   W_p | encoder in E_p | DATR_p in E_p | agreement
    class-<p>_flips           Fig. 8   DATR-induced cluster changes, raw | processed
                                       (Figs. 5-8 are vegetation's; building 9-12, road 13-16,
                                       vehicle 17-20; other prompts have no paper number)
    decoder_masks             Fig. 21  all kept decoder masks, per prompt
    mask-<p>-<r>              Fig. 22+r per kept mask r = 0, 1, 2: encoder similarity |
                                       decoder activation | comparison

The numbers come from the names (view.paper_figure) and go into figures.json as `paper`
and `paper_figure`. Colours: the encoder clusters are matched to GT classes (display only, see
engine/present/palette.py), and every DATR map is already aligned to the encoder labels, so
one palette serves every figure of an image. Metrics in titles are read from the
sweep's rows (DIR/rows), never recomputed. The pieces: view (one image's inputs, as
numpy), panels (drawing helpers and titles), draw (the figures, the manifest, the page),
parallel (a sweep's figures drawn by worker processes).
"""
