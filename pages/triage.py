"""Triage page: photo -> crop -> differential diagnosis, risk tier, explanations, biopsy site."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

import streamlit as st

from derm_core.data.clinical import SEXES, SITES, Clinical
from derm_core.data.dataset import DataError
from derm_core.data.images import (
    UPLOAD_EXTENSIONS,
    ImageError,
    crop_photo,
    data_uri,
    describe_crop,
    load_image,
    load_mask,
)
from derm_core.evaluate.figures import differential_chart, mark_biopsy, tier_chart
from derm_core.explain import lesion, mapquality, similar, skin_tone
from derm_core.explain import maps as explain
from derm_core.model import conformal
from derm_core.model.transforms import to_pil_preview
from derm_core.triage.report import case_report_html, case_report_pdf
from derm_core.triage.rules import biopsy_caveat, biopsy_class, describe_tier_rule
from pages._common import (
    ACTIVE_PROFILE,
    active_thresholds,
    crop_widget,
    data_dir_setting,
    disclaimer,
    example_cases,
    get_predictor,
    model_caption,
    thumbnail,
    two_columns,
)

if TYPE_CHECKING:
    from PIL import Image

TIER_BOX = {0: st.success, 1: st.warning, 2: st.error}

st.title(":material/search: Triage")
disclaimer()
pred = get_predictor()
thresholds = active_thresholds(pred)
model_caption(pred, thresholds.name)


@st.cache_data(max_entries=32, show_spinner=False)
def decode(raw: bytes) -> Image.Image:
    return load_image(raw)


@st.cache_data(max_entries=32, show_spinner="Finding the lesion ...")
def suggested_box(digest: str, _photo: Image.Image) -> tuple[int, int, int, int]:
    return lesion.suggest_crop(_photo)   # the same rule as `predict --crop auto`


# ---------------------------------------------------------------- 1. the photo
left, right = st.columns([3, 2])
with left:
    linked = st.query_params.get("case")  # ?case=<image_id> opens an example case (teaching links)
    if linked and "source" not in st.session_state:
        st.session_state["source"] = "Example case from a dataset"
    source = st.radio("Photo", ["Upload a photo", "Example case from a dataset"], horizontal=True, key="source")
    truth = None
    if source == "Upload a photo":
        data_dir_setting()     # the sidebar's dataset folder (similar cases), drawn before any stop below
        up = st.file_uploader("Lesion photo", type=UPLOAD_EXTENSIONS, key="upload",
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
    suggested = suggested_box(digest, photo)
    # the whole photo scaled to this column (phone photos included); the box comes back in original pixels
    box, shown = crop_widget(photo, digest, suggested, key=f"crop-{digest}-{resets}")
    st.caption(f"Photo {photo.size[0]}x{photo.size[1]} px shown at {shown.shown[0]}x{shown.shown[1]}: drag the box "
               "or its corners.")
    if st.button("Reset crop to the suggested box", key="reset_crop", icon=":material/crop_free:"):
        st.session_state["crop_resets"] = resets + 1
        st.rerun()
    try:
        crop = crop_photo(photo, box)
    except ImageError as e:
        st.error(f"The crop cannot be used: {e}. Draw a larger box around the lesion.")
        st.stop()

with right:
    st.subheader("Clinical data (optional)")
    age = st.number_input("Age", min_value=0, max_value=120, value=None, step=1, key="age")
    sex = st.selectbox("Sex", ["not given", *SEXES], key="sex")
    site = st.selectbox("Body site", ["not given", *SITES], key="site")
    clinical = Clinical.parse(age, None if sex == "not given" else sex, None if site == "not given" else site)
    h_in, w_in = pred.card.input_size     # the model sees the crop's centre at its input's shape
    st.image(data_uri(to_pil_preview(crop, (h_in, w_in))),
             caption=f"Model input: crop {crop.size[0]}x{crop.size[1]} px of a {photo.size[0]}x{photo.size[1]} photo, "
                     f"seen at {w_in}x{h_in} (its centre, where the shapes differ)")

@st.cache_data(max_entries=32, show_spinner=False)
def cached_ita(key, _crop: Image.Image, mask_path: str | None, box, size) -> float | None:
    """ITA of the skin around the lesion in the crop: outside the dataset's mask for an example
    case, else outside the automatic outline."""
    mask = load_mask(mask_path, size)[0] if mask_path else None
    return skin_tone.estimate_ita(_crop, None if mask is None else lesion.crop_mask(mask, box))


# ---------------------------------------------------------------- 3. results
anyway_key = f"anyway-{digest}-{box}"   # "triage anyway" holds for this photo and crop only
result = pred.predict(crop, clinical, thresholds, anyway=st.session_state.get(anyway_key, False))
st.divider()
if result.withheld:
    st.error(f"**Not triaged: out of scope.** DermTriage gives no risk tier, differential or biopsy site because "
             f"{result.withheld}. Upload a dermatoscopic photo of a skin lesion, or draw the crop box tightly around "
             "the lesion.", icon=":material/block:")
    report_args = dict(crop=crop, result=result, taxonomy=pred.taxonomy, thresholds=thresholds,
                       model_name=pred.card.name, model_version=pred.card.version,
                       clinical={"age": clinical.age, "sex": clinical.sex, "site": clinical.site},
                       extra={"crop box": describe_crop(box, photo.size)})
    d1, d2, d3 = st.columns([1, 1, 1])
    if d1.button("Triage anyway", key="triage_anyway", icon=":material/warning:", type="secondary",
                 help="Only for a photo you know shows a skin lesion: the model was trained on dermatoscopic photos "
                      "only, so its output on this photo may mean nothing."):
        st.session_state[anyway_key] = True
        st.rerun()
    d2.download_button("Report (HTML)", case_report_html(**report_args), file_name="dermtriage-report.html",
                       mime="text/html", key="report_withheld", icon=":material/download:")
    d3.download_button("Report (PDF)", case_report_pdf(**report_args), file_name="dermtriage-report.pdf",
                       mime="application/pdf", key="report_pdf_withheld", icon=":material/picture_as_pdf:")
    st.stop()
if result.anyway_warning:
    st.warning(f"**{result.anyway_warning}**", icon=":material/report:")
tier_rank = pred.taxonomy.tiers[result.tier].rank
TIER_BOX[min(tier_rank, 2)](f"**Risk tier: {result.tier}** — {result.what_to_do}")
st.markdown(f"**Why this tier:** {result.tier_reason}")
for note in result.notes:
    st.caption(note)

c1, c2 = st.columns([3, 2])
with c1:
    st.subheader("Differential diagnosis")
    if result.low_confidence:
        st.info("Low confidence: no class reached its operating threshold. The most probable class is shown.")
    for code, p in result.differential:
        st.markdown(f"- **{pred.taxonomy.display_names[code]}** ({code}): {p:.1%}")
    names = pred.taxonomy.display_names
    rules = f"Most likely diagnosis: **{names[result.most_likely]}**"
    if all(c != result.most_likely for c, _ in result.differential):    # a class with a high threshold of its own
        rules += (f" (under its own threshold of {thresholds.classes[result.most_likely]:.1%}, so not in the "
                  "differential)")
    if result.balanced is not None:
        rules += f" · balanced rule (every class counted as equally common): **{names[result.balanced]}**"
    st.caption(rules)
    st.plotly_chart(differential_chart(result, pred.taxonomy, thresholds), key="diff_chart")
    # -- issue 12: conformal prediction set beside the threshold differential
    st.markdown("**Prediction set** (a coverage guarantee)")
    try:
        cal = conformal.active_calibration(pred.card, st.session_state.get(ACTIVE_PROFILE))
    except conformal.ConformalError as e:
        cal, cal_error = None, str(e)
    else:
        cal_error = ("this model has no conformal calibration yet: calibrate it in **Model lab › Evaluate & tune** "
                     "(Prediction sets)")
    if cal is None:
        pset = None
        st.caption(f"No prediction set: {cal_error}.")
    else:
        level = st.select_slider("Coverage level", conformal.PAGE_LEVELS, value=conformal.DEFAULT_LEVEL,
                                 key="conformal_level", format_func=lambda v: f"{v:.0%}",
                                 help="Higher levels give larger sets that miss the true diagnosis less often.")
        pset = cal.prediction_set(result.probs, level)
        st.markdown(" · ".join(f"**{pred.taxonomy.display_names[c]}** ({c})" for c in pset) or "**(empty set)**")
        st.caption(conformal.describe(pset, level, pred.taxonomy.display_names))
with c2:
    st.subheader("Probability of each tier")
    st.plotly_chart(tier_chart(result, pred.taxonomy), key="tier_chart")
    st.caption(describe_tier_rule(pred.taxonomy, thresholds.tiers))
    mask_path = truth.get("mask_path") if truth is not None else None
    ita = cached_ita((digest, box), crop, mask_path if isinstance(mask_path, str) else None, box, photo.size)
    tone = skin_tone.tone_group(ita)
    st.markdown(f"**Skin tone around the lesion:** {tone}" + (f" ({skin_tone.ita_text(ita)})" if ita is not None
                                                                else ""))
    st.caption(skin_tone.training_note(tone, pred.card.extra.get("skin_tones", {}).get("train")) +
               " ITA is estimated from the photo's colours: lighting and white balance shift it.")

# ---------------------------------------------------------------- 4. explanations
st.divider()
st.subheader("Why? Explanations")
crop_key = (digest, box, clinical)
classes = list(pred.taxonomy.classes)
top = classes.index(result.differential[0][0])
urgent = classes.index(biopsy_class(result, pred.taxonomy))    # LIME's class: the biopsy site is for it


@st.cache_data(max_entries=64, show_spinner=False)
def cached_cam(key, method: str, target: int, _crop: Image.Image, _clinical: Clinical, model_id: str,
               member: int | None = None):
    return explain.cam_heatmap(pred, _crop, target, method, _clinical, member)


@st.cache_data(max_entries=32, show_spinner=False)
def cached_lime(key, samples: int, segments: int, target: int, _crop: Image.Image, _clinical: Clinical, model_id: str):
    return explain.lime_explanation(pred, _crop, target, num_samples=samples, n_segments=segments, clinical=_clinical)


@st.cache_data(max_entries=32, show_spinner=False)
def cached_mask(key, _crop: Image.Image):
    return lesion.suggest_mask(_crop)


@st.cache_data(max_entries=64, show_spinner="Checking the map ...")
def cached_quality(key, which, _explanation, _crop: Image.Image, _mask, _clinical: Clinical, model_id: str):
    return mapquality.explanation_quality(pred, _crop, _explanation, _mask, _clinical)


model_id = pred.card.identity().key
cam_tab, lime_tab = st.tabs(["Grad-CAM heat map", "LIME superpixels and biopsy site"])
with cam_tab:
    a, b = st.columns(2)
    method = a.selectbox("Method", list(explain.CAM_METHODS), key="cam_method", format_func=explain.CAM_NAMES.get,
                         help="Grad-CAM and Grad-CAM++ use gradients; EigenCAM and ScoreCAM do not.")
    if "cam_class" not in st.session_state or st.session_state.get("cam_class_top") != top:
        # first shown, or a new top class (another photo, crop or clinical data): explain the new top class
        st.session_state["cam_class"] = st.session_state["cam_class_top"] = top
    target = b.selectbox("Explain class", range(len(classes)), key="cam_class",
                         format_func=lambda i: pred.taxonomy.display_names[classes[i]])
    if method == "scorecam":   # issue 13: say so before it runs
        st.warning("ScoreCAM runs the network once per feature channel: it can take tens of seconds on a CPU.")
    member = None
    if pred.card.is_ensemble:   # a class-activation map needs one network's layer: the user picks the member
        member = st.selectbox("Ensemble member", range(len(pred.card.members)), key="cam_member",
                              format_func=lambda i: explain.cam_scope(pred.card, i),
                              help="The ensemble averages its members' outputs. A heat map shows one member's "
                                   "evidence; LIME (next tab) explains the whole ensemble.")
    cam_name = explain.CAM_NAMES[method]
    with st.spinner(f"Computing {cam_name} ..."):
        cam = cached_cam(crop_key, method, target, crop, clinical, model_id, member)
    scope = explain.cam_scope(pred.card, cam.member)
    st.image(data_uri(cam.overlay(crop), 2 * 420, "JPEG"), width=420,
             caption=f"{cam_name} for {pred.taxonomy.display_names[classes[cam.target]]} ({cam.seconds:.2f} s): "
                     "red = regions that raised this class's score"
                     + (f". It explains ensemble {scope}, not the whole ensemble" if scope else ""))
    cam_quality = cached_quality(crop_key, ("cam", method, target), cam, crop, cached_mask(crop_key, crop), clinical,
                                 model_id)
    st.caption(f"Map check ({cam_name}, automatic lesion outline): {cam_quality.summary()}")

with lime_tab:
    a, b = st.columns(2)
    samples = a.slider("LIME samples", 50, 1000, explain.LIME_SAMPLES, step=50, key="lime_samples",
                       help="More samples: more stable explanations, slower.")
    segments = b.slider("Superpixels", 10, 80, explain.LIME_SEGMENTS, step=5, key="lime_segments")
    with st.status("Running LIME ...", expanded=False) as status:
        lime_res = cached_lime(crop_key, samples, segments, urgent, crop, clinical, model_id)
        full, mask_note = None, ""      # a bad mask file falls back to the automatic outline (issue 13)
        if truth is not None and isinstance(truth.get("mask_path"), str):
            full, mask_note = load_mask(truth["mask_path"], photo.size)
        if full is not None:
            mask, mask_src = lesion.crop_mask(full, box), "the dataset's lesion mask"
        else:
            mask, mask_src = cached_mask(crop_key, crop), "the automatic lesion outline"
        site_ = lesion.biopsy_site(lime_res, mask, mask_src)
        took = f"{lime_res.seconds:.1f} s" if lime_res.seconds >= 0.05 else "under 0.1 s"
        status.update(label=f"LIME done in {took}", state="complete")
    if urgent != top:
        st.caption(f"LIME explains **{names[classes[urgent]]}**, the most urgent class in the differential (the most "
                   f"probable is {names[classes[top]]}): a biopsy site is placed where the evidence for the most "
                   "serious possible diagnosis is strongest.")
    geo = lime_res.geometry
    region = geo.mask_to_original(site_.region)
    point = geo.point_to_original(site_.x, site_.y)
    # both pictures show the crop box, drawn for the width they are shown at (measured above the columns, so
    # the two start at the same height)
    x1, x2, shown_w = two_columns("lime-row", min_width=0)
    lime_img = lime_res.overlay_on_image(crop, width=2 * shown_w)
    lime_notes = "".join([f"; it explains the whole ensemble of {len(pred.card.members)} members"
                          if pred.card.is_ensemble else "",
                          "; greyed: outside the model's centre crop" if lime_res.cut_away else ""])
    x1.image(data_uri(lime_img, fmt="JPEG"), width="stretch",
             caption=f"Green supports, red opposes {pred.taxonomy.display_names[classes[lime_res.target]]}{lime_notes}")
    with x2:
        biopsy_img = mark_biopsy(crop, region, point, shown_w, mask) if site_.suggested else crop
        st.image(data_uri(biopsy_img, 2 * shown_w, "JPEG"), width="stretch",
                 caption=f"Suggested biopsy site (cyan: point and region) inside {mask_src} (yellow)"
                 if site_.suggested else "No biopsy site suggested")
    ox, oy = geo.point_to_photo(site_.x, site_.y, box)
    if mask_note:
        st.warning(mask_note)
    lime_quality = cached_quality(crop_key, ("lime", samples, segments, urgent, mask_src), lime_res, crop, mask,
                                  clinical, model_id)
    caveat = biopsy_caveat(result, pred.taxonomy) if site_.suggested else ""
    if site_.suggested:
        st.caption(f"Biopsy site at x={ox}, y={oy} in the original photo's pixels. {site_.note}")
        if caveat:
            st.info(caveat, icon=":material/info:")
        if not lime_quality.faithful:     # the site comes from this map: say when the check does not back it
            st.warning("The map check below does not show this LIME map to be faithful: read the biopsy site as a "
                       "weak hint, and choose the site clinically.")
    else:
        st.info(site_.note.capitalize())
    st.caption(f"Map check (LIME, {mask_src}): {lime_quality.summary()}")

# ---------------------------------------------------------------- issue 12: similar cases
st.divider()
st.subheader("Similar cases from the training data")


@st.cache_resource(show_spinner=False, max_entries=4)
def similar_index(network_key: str, data_dir: str) -> similar.FolderIndex:
    """The index (or None), images to index, and a cached index ignored (and why): only reads
    what is cached; cleared once a build finishes."""
    return similar.folder_index(pred.card, data_dir, build=False)


# the dataset folder field is in the sidebar in both modes (drawn at the top, by example_cases in example mode)
sim_dir = st.session_state.get("data_dir_value", "")
if not sim_dir:
    st.caption("Set the dataset folder in the sidebar (the model's own training data) to see similar cases.")
else:
    network = pred.card.identity().network_key
    try:
        index, n_index, ignored = similar_index(network, sim_dir)
        build = similar.index_build(pred.card, sim_dir) if index is None and n_index else None
        if build is not None and not build.running and build.error is None:
            similar_index.clear(network, sim_dir)      # built since this answer was cached (here or in another tab)
            index, n_index, ignored = similar_index(network, sim_dir)
    except (ValueError, DataError, OSError) as e:
        index, n_index, build, ignored = None, 0, None, None
        st.caption(f"No similar cases: {e}.")
    if ignored and index is None:
        st.warning(f"Ignored the cached similar-case index (not this model's): {ignored}. Index the images again "
                   "to replace it.")
    if index is None and n_index:
        offer, started = st.empty(), False     # "not indexed yet" and the button, gone once the index is there
        if build is None or not build.running:
            with offer.container():
                st.caption(f"The {n_index} training and validation images of this model are not indexed yet (once "
                           "per model and data; a few minutes on a CPU).")
                if build is not None and build.error:
                    st.error(f"Indexing failed: {build.error}")
                if st.button(f"Index {n_index} images", key="similar_build", icon=":material/manage_search:"):
                    build, started = similar.start_index_build(pred.card, sim_dir, n_index), True
        if build is not None and (build.running or started):   # in the background: a rerun or another tab follows it
            offer.empty()
            bar = st.progress(build.fraction, text="Indexing the training and validation images ...")
            while not build.wait(0.5):
                bar.progress(build.fraction, text=f"Indexing the training and validation images: {build.done} of "
                                                  f"{build.total} ...")
            bar.empty()
            if build.error:
                st.error(f"Indexing failed: {build.error}")
            else:
                similar_index.clear(network, sim_dir)
                index = build.index
    if index is not None:
        k_sim = st.slider("Cases", 3, 12, 6, key="similar_k")
        try:
            hits = similar.similar_cases(pred, crop, index, k_sim, clinical)
        except ValueError as e:      # an index that does not fit this model: never ranked on the wrong features
            hits = []
            st.warning(f"Ignored the similar-case index: {e}.")
        if hits:
            st.image([thumbnail(h.path, 120) for h in hits], width=120,
                     caption=[f"{pred.taxonomy.display_names[h.label]} · similarity {h.similarity:.2f}" for h in hits])
            st.caption("Nearest by cosine similarity of the network's image features, among the model's training "
                       "and validation images, with their recorded diagnoses. Similar-looking is not the same "
                       "diagnosis.")

# ---------------------------------------------------------------- 5. report
report_args = dict(
    crop=crop, result=result, taxonomy=pred.taxonomy, thresholds=thresholds, model_name=pred.card.name,
    model_version=pred.card.version,
    figures={f"{cam_name} heat map for {names[classes[cam.target]]}" + (f" (ensemble {scope})" if scope else ""):
             cam.overlay(crop),
             f"LIME for {names[classes[lime_res.target]]} (green supports, red opposes{lime_notes})": lime_img,
             f"Suggested biopsy site (from the LIME map for {names[classes[lime_res.target]]})"
             + (f". {caveat}" if caveat else "") if site_.suggested else "No biopsy site suggested": biopsy_img},
    clinical={"age": clinical.age, "sex": clinical.sex, "site": clinical.site},
    extra={**({f"prediction set ({level:.0%})": conformal.describe(pset, level, pred.taxonomy.display_names)}
              if pset is not None else {}),
           f"map check, {cam_name}": cam_quality.summary(), "map check, LIME": lime_quality.summary(),
           "biopsy site (original pixels)": f"x={ox}, y={oy}" if site_.suggested else site_.note,
           "skin tone around the lesion": tone + (f" ({skin_tone.ita_text(ita)}; estimated from the photo's colours)"
                                                   if ita is not None else ""),
           "crop box": describe_crop(box, photo.size)})
d1, d2 = st.columns(2)     # wide enough for the labels at a 1024-px window
d1.download_button("Download case report (HTML)", case_report_html(**report_args), file_name="dermtriage-report.html",
                   mime="text/html", key="report", icon=":material/download:")
d2.download_button("Download case report (PDF)", case_report_pdf(**report_args), file_name="dermtriage-report.pdf",
                   mime="application/pdf", key="report_pdf", icon=":material/picture_as_pdf:")
