"""Weights on disk: this project's checkpoints (checkpoint.py) and foreign ones mapped into our parameter names, each
with a load report (report.py): public pre-trained encoders (pretrained.py: BERT in bert.py, HuggingFace / timm ViT in
vit.py, Chinese-CLIP in cnclip.py, shared reading and mapping helpers in foreign.py). Sits just above models: it may
build models, never tasks, engine or inference."""
