"""The synthetic demo, on top of src (src never imports it): scene generation and rendering (`demo.data`), the
rule-based reader of the rendered shapes and its t2i metrics hook (`demo.scene_reader`), the report of a
`scripts/run_demo.sh` run (`demo.report`) and a probe of the image encoder on the demo scenes
(`demo.probe_image_encoder`)."""
