"""Triage page: photo -> crop -> differential diagnosis, risk tier, explanations, biopsy site."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import streamlit as st
from PIL import Image
from streamlit_cropper import st_cropper

from derm_core import explain, lesion
from derm_core.clinical import SEXES, SITES, Clinical
from derm_core.data import DataError
from derm_core.figures import differential_chart, mark_biopsy, tier_chart
from derm_core.images import ImageError, load_image
from derm_core.report import case_report_html
from pages._common import active_thresholds, disclaimer, example_cases, get_predictor, model_caption

UPLOAD_TYPES = ["jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif"]
TIER_BOX = {0: st.success, 1: st.warning, 2: st.error}

st.title("🔎 Triage")
disclaimer()
pred = get_predictor()
thresholds = active_thresholds(pred)
model_caption(pred, thresholds.name)


@st.cache_data(max_entries=32, show_spinner=False)
def decode(raw: bytes) -> Image.Image:
    return load_image(raw)


@st.cache_data(max_entries=32, show_spinner="Finding the lesion ...")
def suggested_box(digest: str, _photo: Image.Image) -> tuple[int, int, int, int]:
    return lesion.suggest_box(_photo, margin=0.15)


# ---------------------------------------------------------------- 1. the photo
left, right = st.columns([3, 2])
with left:
    linked = st.query_params.get("case")  # ?case=<image_id> opens an example case (teaching links)
    if linked and "source" not in st.session_state:
        st.session_state["source"] = "Example case from a dataset"
    source = st.radio("Photo", ["Upload a photo", "Example case from a dataset"], horizontal=True, key="source")
    truth = None
    if source == "Upload a photo":
        up = st.file_uploader("Lesion photo", type=UPLOAD_TYPES, key="upload",
                              help="Stays in memory; nothing is written to disk unless you download a report.")
        if up is None:
            st.info("Upload a photo of a skin lesion (dermatoscopic images work best), or pick an example case.")
            st.stop()
        raw, name = up.getvalue(), up.name
    else:
        try:
            cases = example_cases(pred)
        except DataError as e:
            st.error(f"No example cases: {e}")
            st.stop()
        if linked in set(cases["image_id"]) and "example" not in st.session_state:
            st.session_state["example"] = linked
        image_id = st.selectbox("Example case", cases["image_id"], key="example",
                                help="Images of the model's test split when its split file is available.")
        row = cases.set_index("image_id").loc[image_id]
        raw, name, truth = Path(row["path"]).read_bytes(), image_id, row
        if st.checkbox("Reveal the recorded diagnosis", key="reveal"):
            st.write(f"Recorded diagnosis: **{pred.taxonomy.display_names[row['label']]}**")

    try:
        photo = decode(raw)
    except ImageError as e:
        st.error(f"**{name}** cannot be used: {e}")
        st.stop()
    digest = hashlib.sha1(raw).hexdigest()

    # ------------------------------------------------------------ 2. crop
    st.subheader("Crop the lesion")
    resets = st.session_state.setdefault("crop_resets", 0)
    l, t, r, b = suggested_box(digest, photo)
    rect = st_cropper(photo, default_coords=(l, r, t, b), return_type="box", realtime_update=True,
                      box_color="#1565c0", key=f"crop-{digest}-{resets}")
    if st.button("Reset crop to the suggested box", key="reset_crop"):
        st.session_state["crop_resets"] = resets + 1
        st.rerun()
    box = (rect["left"], rect["top"], rect["left"] + max(rect["width"], 1), rect["top"] + max(rect["height"], 1))
    crop = photo.crop(box)
    if min(crop.size) < 16:
        st.error("The crop is too small: draw a larger box around the lesion.")
        st.stop()

with right:
    st.subheader("Clinical data (optional)")
    age = st.number_input("Age", min_value=0, max_value=120, value=None, step=1, key="age")
    sex = st.selectbox("Sex", ["not given", *SEXES], key="sex")
    site = st.selectbox("Body site", ["not given", *SITES], key="site")
    clinical = Clinical.parse(age, None if sex == "not given" else sex, None if site == "not given" else site)
    st.image(crop, caption=f"Model input: crop {crop.size[0]}x{crop.size[1]} px of a {photo.size[0]}x{photo.size[1]} photo")

# ---------------------------------------------------------------- 3. results
result = pred.predict(crop, clinical, thresholds)
st.divider()
if result.out_of_scope:
    st.warning("⚠️ **Out of scope?** This photo does not look like the dermatoscopic lesion images the model was "
               f"trained on (score {result.ood_score:.2f}). The output below is unreliable.")
tier_rank = pred.taxonomy.tiers[result.tier].rank
TIER_BOX[min(tier_rank, 2)](f"**Risk tier: {result.tier}** — {result.action}")
for note in result.notes:
    st.caption(note)

c1, c2 = st.columns([3, 2])
with c1:
    st.subheader("Differential diagnosis")
    if result.low_confidence:
        st.info("Low confidence: no class reached its operating threshold. The most probable class is shown.")
    for code, p in result.differential:
        st.markdown(f"- **{pred.taxonomy.display_names[code]}** ({code}): {p:.1%}")
    st.plotly_chart(differential_chart(result, pred.taxonomy, thresholds), key="diff_chart")
with c2:
    st.subheader("Risk-tier probability")
    st.plotly_chart(tier_chart(result, pred.taxonomy), key="tier_chart")

# ---------------------------------------------------------------- 4. explanations
st.divider()
st.subheader("Why? Explanations")
crop_key = (digest, box, clinical)
classes = list(pred.taxonomy.classes)
top = classes.index(result.differential[0][0])


@st.cache_data(max_entries=64, show_spinner=False)
def cached_cam(key, method: str, target: int, _crop: Image.Image, _clinical: Clinical, model_id: str):
    return explain.cam_heatmap(pred, _crop, target, method, _clinical)


@st.cache_data(max_entries=32, show_spinner=False)
def cached_lime(key, samples: int, segments: int, target: int, _crop: Image.Image, _clinical: Clinical, model_id: str):
    return explain.lime_explanation(pred, _crop, target, num_samples=samples, n_segments=segments, clinical=_clinical)


@st.cache_data(max_entries=32, show_spinner=False)
def cached_mask(key, _crop: Image.Image) -> np.ndarray:
    return lesion.suggest_mask(_crop)


model_id = f"{pred.card.path}:{pred.card.version}"
cam_tab, lime_tab = st.tabs(["Grad-CAM heat map", "LIME superpixels and biopsy site"])
with cam_tab:
    a, b = st.columns(2)
    method = a.selectbox("Method", list(explain.CAM_METHODS), key="cam_method",
                         help="Grad-CAM and Grad-CAM++ use gradients; EigenCAM and ScoreCAM do not.")
    target = b.selectbox("Explain class", range(len(classes)), index=top, key="cam_class",
                         format_func=lambda i: pred.taxonomy.display_names[classes[i]])
    with st.spinner(f"Computing {method} ..."):
        cam = cached_cam(crop_key, method, target, crop, clinical, model_id)
    st.image(cam.overlay(crop), width=420,
             caption=f"{method} for {pred.taxonomy.display_names[classes[cam.target]]} ({cam.seconds:.2f} s): "
                     "red = regions that raised this class's score")

with lime_tab:
    a, b = st.columns(2)
    samples = a.slider("LIME samples", 50, 1000, explain.LIME_SAMPLES, step=50, key="lime_samples",
                       help="More samples: more stable explanations, slower.")
    segments = b.slider("Superpixels", 10, 80, explain.LIME_SEGMENTS, step=5, key="lime_segments")
    with st.status("Running LIME ...", expanded=False) as status:
        lime_res = cached_lime(crop_key, samples, segments, top, crop, clinical, model_id)
        if truth is not None and isinstance(truth.get("mask_path"), str):
            full = np.asarray(Image.open(truth["mask_path"]).convert("L")) > 127
            mask, mask_src = full[box[1]:box[3], box[0]:box[2]], "the dataset's lesion mask"
        else:
            mask, mask_src = cached_mask(crop_key, crop), "an automatic lesion outline"
        site_ = explain.biopsy_site(lime_res, mask)
        status.update(label=f"LIME done in {lime_res.seconds:.1f} s", state="complete")
    geo = lime_res.geometry
    region = geo.heatmap_to_original(site_.region.astype(np.float32)) > 0.5
    point = geo.point_to_original(site_.x, site_.y)
    x1, x2 = st.columns(2)
    x1.image(lime_res.overlay(crop), width=360,
             caption=f"Green supports, red opposes {pred.taxonomy.display_names[classes[lime_res.target]]}")
    biopsy_img = mark_biopsy(crop, region, point)
    x2.image(biopsy_img, width=360, caption=f"Suggested biopsy site (cyan) inside {mask_src}")
    ox, oy = point[0] + box[0], point[1] + box[1]
    st.caption(f"Biopsy site at x={ox}, y={oy} in the original photo's pixels. {site_.note}")

# ---------------------------------------------------------------- 5. report
html = case_report_html(
    crop, result, pred.taxonomy, thresholds, pred.card.name, pred.card.version,
    figures={f"{cam.method} heat map": cam.overlay(crop), "LIME (green supports, red opposes)": lime_res.overlay(crop),
             "Suggested biopsy site": biopsy_img},
    clinical={"age": clinical.age, "sex": clinical.sex, "site": clinical.site},
    extra={"biopsy site (original pixels)": f"x={ox}, y={oy}", "crop box": box})
st.download_button("Download case report (HTML)", html, file_name="dermtriage-report.html", mime="text/html",
                   key="report")
