"""Generate the synthetic clinical-referral triage dataset used by tunevault's examples.

This module owns the whole example dataset: the fixed system prompt, the six routing
labels, every note template and slot vocabulary, and the deterministic sampling that
turns them into OpenAI fine-tuning chat JSONL (one ``{"messages": [...]}`` object per
line: system instruction, a short referral note, and exactly one label).

Everything it writes is invented. There are no real patients, clinicians, or records;
the only patient details are an age, a sex, an occupation or social-history phrase,
and sometimes an obviously synthetic ``SYN-`` reference.

Design choices that matter for the fine-tuning demo:

* The label follows from the clinical content (symptoms, examination, test results,
  the request), not from one keyword. Every note also carries noise that is independent
  of its label (vitals, medications, social history) and, often, stable past history
  borrowed from *other* specialties, so a model has to read the whole note.
* Note templates are shared by all six labels, so sentence structure never gives the
  label away; only the clinical content does.
* Classes are balanced (counts differ by at most one when rows is not a multiple of six).
* Notes are 25-70 words and 1-3 sentences; drafts outside those bounds are redrawn.
* Training and validation rows come from separate seed streams and are disjoint: no two
  notes in either file are equal once digits are masked, and no two share the same
  (condition, symptom phrasing, finding phrasing, template) skeleton.

Standard library only. Example:

    python examples/make_triage_dataset.py --rows 360 --seed 7 --out examples/triage.jsonl \\
        --validation-rows 60 --validation-out examples/triage_validation.jsonl
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

LABELS: tuple[str, ...] = (
    "cardiology",
    "dermatology",
    "gastroenterology",
    "neurology",
    "orthopedics",
    "pulmonology",
)

SYSTEM_PROMPT: str = (
    "Route this referral note to one specialty, answering with only the label: "
    + ", ".join(LABELS)
    + "."
)

MIN_WORDS: int = 25
MAX_WORDS: int = 70
MAX_SENTENCES: int = 3
MAX_ATTEMPTS_PER_ROW: int = 500


@dataclass(frozen=True)
class Condition:
    """One clinical picture that routes to a label, with interchangeable phrasings.

    Strings may contain ``{a-b}`` (random integer, or decimal with the lower bound's
    precision) and ``{x|y|z}`` (random choice) markers, expanded per note.
    ``units`` lists the duration units that make sense for the presentation.
    """

    name: str
    symptoms: tuple[str, ...]
    findings: tuple[str, ...]
    treatments: tuple[str, ...]
    requests: tuple[str, ...]
    units: tuple[str, ...]


ACUTE: tuple[str, ...] = ("day", "week")
SUBACUTE: tuple[str, ...] = ("week", "month")
CHRONIC: tuple[str, ...] = ("month", "year")

CONDITIONS: dict[str, tuple[Condition, ...]] = {
    "cardiology": (
        Condition(
            "stable angina",
            (
                "central chest tightness on exertion that settles with rest",
                "chest pressure when walking uphill, easing within minutes of stopping",
                "exertional chest heaviness spreading to the jaw",
                "tightness across the chest when climbing stairs in the cold",
            ),
            (
                "exercise ECG showed {2-3} mm horizontal ST depression at stage two",
                "CT coronary calcium score is {310-980}",
                "resting ECG shows T-wave inversion in the lateral leads",
                "stress echo shows inducible wall-motion abnormality in the anterior wall",
            ),
            ("despite bisoprolol", "despite a nitrate spray that only partly helps"),
            (
                "Please assess for coronary angiography.",
                "Requesting evaluation for ischemic heart disease.",
            ),
            SUBACUTE,
        ),
        Condition(
            "atrial fibrillation",
            (
                "intermittent palpitations with a fast, irregular heartbeat",
                "episodes of a racing, irregular pulse with light-headedness",
                "fluttering in the chest lasting hours at a time",
            ),
            (
                "ECG confirms atrial fibrillation at {112-148} bpm",
                "a 24-hour Holter showed paroxysmal atrial fibrillation with a {21-68}% burden",
                "the pulse is irregularly irregular at {104-138} per minute",
            ),
            ("despite diltiazem", "despite bisoprolol {2.5|5|7.5} mg"),
            (
                "Please advise on rate control and anticoagulation.",
                "Requesting rhythm management review.",
            ),
            SUBACUTE,
        ),
        Condition(
            "heart failure",
            (
                "ankle swelling and breathlessness when lying flat",
                "waking at night gasping for breath, with swollen legs",
                "needing {3-4} pillows to sleep and pitting edema to the knees",
                "weight gain of {3-7} kg with increasing leg swelling",
            ),
            (
                "echo shows an ejection fraction of {22-38}%",
                "NT-proBNP is {1400-5200} pg/mL",
                "the JVP is raised with a third heart sound",
            ),
            ("despite furosemide {40|80} mg daily",),
            (
                "Please review for heart failure optimization.",
                "Requesting assessment of reduced ventricular function.",
            ),
            SUBACUTE,
        ),
        Condition(
            "aortic stenosis",
            (
                "dizziness on exertion and one near-faint while gardening",
                "chest tightness on exertion with a near-syncopal episode",
            ),
            (
                "a harsh ejection systolic murmur radiates to both carotids",
                "echo shows an aortic valve area of 0.{7-9} cm2 with a peak gradient of {58-84} mmHg",
            ),
            (),
            (
                "Please assess for valve intervention.",
                "Requesting valve clinic review.",
            ),
            SUBACUTE,
        ),
        Condition(
            "conduction disease",
            (
                "sudden blackouts without warning, recovering within a minute",
                "collapses during exercise with rapid, complete recovery",
                "episodes of dizziness and a very slow pulse",
            ),
            (
                "Holter recorded runs of nonsustained ventricular tachycardia",
                "ECG shows a prolonged QTc of {490-545} ms",
                "ECG shows complete heart block with a ventricular rate of {32-42}",
                "ECG shows Mobitz type II second-degree block",
            ),
            (),
            (
                "Please assess for arrhythmia and device therapy.",
                "Requesting pacing assessment.",
            ),
            SUBACUTE,
        ),
        Condition(
            "pericarditis",
            (
                "sharp chest pain that is worse lying flat and eased by sitting forward",
                "pleuritic central chest pain after a viral illness, relieved by leaning forward",
            ),
            (
                "ECG shows widespread saddle-shaped ST elevation with PR depression",
                "a pericardial friction rub is audible",
                "echo shows a small pericardial effusion",
            ),
            ("despite ibuprofen",),
            (
                "Please advise on management and colchicine.",
                "Requesting review for recurrent pericardial inflammation.",
            ),
            ACUTE,
        ),
    ),
    "dermatology": (
        Condition(
            "suspected melanoma",
            (
                "a changing pigmented mole on the {back|calf|shoulder|thigh}",
                "a mole on the {back|arm|shin} that has darkened and grown",
                "an itchy, irregular brown lesion on the {upper back|forearm|neck} that bled once",
            ),
            (
                "the lesion measures {7-14} mm with an irregular border and color variegation",
                "dermoscopy shows an atypical pigment network with a blue-white veil",
                "the lesion is asymmetric with three shades of brown and black",
            ),
            (),
            (
                "Please see urgently for excision biopsy.",
                "Requesting urgent review of the pigmented lesion.",
            ),
            SUBACUTE,
        ),
        Condition(
            "psoriasis",
            (
                "thick, silvery scaling plaques on the elbows and knees",
                "itchy scaly plaques on the scalp and behind the ears",
                "well-demarcated red scaly plaques over the lower back",
            ),
            (
                "there is nail pitting with onycholysis",
                "about {8-24}% of body surface area is involved",
                "the plaques have a salmon-pink base with silvery scale",
            ),
            (
                "despite potent topical steroids",
                "despite a vitamin D analogue and coal tar",
            ),
            (
                "Please consider phototherapy or systemic treatment.",
                "Requesting assessment for biologic therapy.",
            ),
            CHRONIC,
        ),
        Condition(
            "severe eczema",
            (
                "a widespread itchy rash in the elbow and knee creases",
                "weeping, cracked patches on both hands",
                "intensely itchy dry patches on the neck and eyelids disturbing sleep",
            ),
            (
                "there is lichenified, excoriated skin with crusting",
                "the rash is poorly demarcated with scratch marks and fissuring",
                "swabs grew Staphylococcus aureus from the crusted areas",
            ),
            (
                "despite emollients and repeated steroid courses",
                "despite tacrolimus ointment",
            ),
            (
                "Please advise on systemic therapy.",
                "Requesting patch testing and specialist management.",
            ),
            CHRONIC,
        ),
        Condition(
            "basal cell carcinoma",
            (
                "a pearly nodule with rolled edges on the {nose|temple|cheek}",
                "a slowly enlarging, non-healing sore on the {ear|forehead|nose}",
                "a shiny bump near the {eyelid|nostril} that crusts and bleeds",
            ),
            (
                "the lesion has fine surface telangiectasia and bleeds on minor trauma",
                "the lesion measures {5-15} mm with a central ulcer",
                "there is a translucent rolled border on close inspection",
            ),
            ("despite antiseptic cream",),
            (
                "Please assess for excision or Mohs surgery.",
                "Requesting removal of the lesion.",
            ),
            CHRONIC,
        ),
        Condition(
            "nodulocystic acne",
            (
                "painful nodules and cysts across the face and upper back",
                "deep, tender cystic spots on the jawline and chest",
            ),
            (
                "early pitted scarring is developing on the cheeks",
                "there are multiple inflamed nodules over {2|3} cm with sinus formation",
            ),
            (
                "despite two courses of oral antibiotics",
                "despite topical retinoid and benzoyl peroxide",
            ),
            (
                "Please consider isotretinoin.",
                "Requesting specialist acne treatment.",
            ),
            SUBACUTE,
        ),
        Condition(
            "hidradenitis suppurativa",
            (
                "recurrent painful boils in both armpits and the groin",
                "draining, tender lumps under the breasts and in the groin",
            ),
            (
                "sinus tracts and rope-like scarring are present",
                "there are double-ended comedones with discharging nodules",
            ),
            ("despite several courses of flucloxacillin",),
            (
                "Please advise on long-term treatment.",
                "Requesting assessment for biologic therapy.",
            ),
            CHRONIC,
        ),
        Condition(
            "bullous pemphigoid",
            (
                "tense, itchy blisters on the trunk and thighs",
                "an itchy urticarial rash that is now forming large blisters on the limbs",
            ),
            (
                "the bullae are tense with a negative Nikolsky sign",
                "there are intact fluid-filled blisters on red bases with no mouth involvement",
            ),
            ("despite antihistamines",),
            (
                "Please assess for a blistering disorder with biopsy.",
                "Requesting urgent review of the blistering eruption.",
            ),
            ACUTE,
        ),
    ),
    "gastroenterology": (
        Condition(
            "colorectal red flags",
            (
                "rectal bleeding with looser stools",
                "a change in bowel habit with dark blood mixed in the stool",
                "alternating constipation and diarrhea with tenesmus",
            ),
            (
                "a fecal immunochemical test is positive at {110-480} ug/g",
                "there is iron-deficiency anemia with hemoglobin {8.2-10.4} g/dL",
                "rectal examination reveals a firm mass at {6-9} cm",
            ),
            (),
            (
                "Please arrange colonoscopy.",
                "Requesting urgent lower endoscopy.",
            ),
            SUBACUTE,
        ),
        Condition(
            "inflammatory bowel disease",
            (
                "bloody diarrhea up to {6-10} times a day with urgency",
                "crampy abdominal pain and loose stools with weight loss of {4-9} kg",
                "nocturnal diarrhea with mucus and lower abdominal cramps",
            ),
            (
                "fecal calprotectin is {420-1600} ug/g",
                "CRP is {35-90} mg/L with negative stool cultures",
                "CT shows thickening of the terminal ileum",
            ),
            ("despite mesalazine",),
            (
                "Please assess for inflammatory bowel disease.",
                "Requesting colonoscopy with biopsies.",
            ),
            SUBACUTE,
        ),
        Condition(
            "dysphagia and reflux",
            (
                "food sticking behind the breastbone when swallowing solids",
                "persistent heartburn with acid regurgitation at night",
                "painful swallowing and frequent belching",
            ),
            (
                "weight loss of {3-8} kg is documented",
                "barium swallow shows a narrowing of the lower esophagus",
                "there is a new iron-deficiency anemia",
            ),
            ("despite {8-12} weeks of a full-dose proton pump inhibitor",),
            (
                "Please arrange upper endoscopy.",
                "Requesting urgent gastroscopy.",
            ),
            SUBACUTE,
        ),
        Condition(
            "peptic ulcer bleeding",
            (
                "epigastric pain with black, tarry stools",
                "gnawing upper abdominal pain and dark sticky stools",
            ),
            (
                "hemoglobin has fallen to {8.5-10.5} g/dL with a raised urea",
                "there is epigastric tenderness and a positive Helicobacter breath test",
            ),
            ("while on long-term naproxen", "despite omeprazole"),
            (
                "Please arrange gastroscopy.",
                "Requesting endoscopic assessment for ulcer disease.",
            ),
            ACUTE,
        ),
        Condition(
            "liver disease",
            (
                "painless jaundice with pale stools and dark urine",
                "abdominal swelling and easy bruising",
                "itching and yellowing of the eyes",
            ),
            (
                "ALT is {180-420} U/L and bilirubin {3.1-7.8} mg/dL",
                "ultrasound shows a coarse, nodular liver with ascites",
                "there are spider naevi and a palpable liver edge",
                "ferritin is {1100-2400} ng/mL with raised transferrin saturation",
            ),
            (),
            (
                "Please assess for chronic liver disease.",
                "Requesting hepatology assessment and further imaging.",
            ),
            SUBACUTE,
        ),
        Condition(
            "celiac disease",
            (
                "bloating and loose, pale stools after eating bread",
                "chronic diarrhea and fatigue with mouth ulcers",
            ),
            (
                "tissue transglutaminase antibodies are strongly positive",
                "ferritin and folate are both low",
            ),
            (),
            (
                "Please arrange duodenal biopsy.",
                "Requesting endoscopy to confirm malabsorption.",
            ),
            CHRONIC,
        ),
    ),
    "neurology": (
        Condition(
            "epilepsy",
            (
                "recurrent witnessed generalized seizures with tongue biting",
                "brief staring spells with lip smacking and no memory afterwards",
                "episodes of jerking of the {right|left} arm spreading up to the face",
            ),
            (
                "EEG shows {left|right} temporal epileptiform discharges",
                "MRI shows {left|right} mesial temporal sclerosis",
                "prolactin was raised after the last event and ECG is normal",
            ),
            ("despite levetiracetam", "despite lamotrigine"),
            (
                "Please review in the seizure clinic.",
                "Requesting advice on antiepileptic treatment.",
            ),
            SUBACUTE,
        ),
        Condition(
            "parkinsonism",
            (
                "a resting tremor of the {right|left} hand with slowed movements",
                "a shuffling gait and smaller handwriting",
                "stiffness, reduced facial expression and a soft voice",
            ),
            (
                "there is cogwheel rigidity with reduced arm swing",
                "finger tapping shows progressive decrement in amplitude",
                "a DaT scan shows reduced striatal uptake",
            ),
            (),
            (
                "Please assess for a parkinsonian syndrome.",
                "Requesting movement disorder review.",
            ),
            CHRONIC,
        ),
        Condition(
            "demyelination",
            (
                "blurred vision in one eye with pain on eye movement",
                "tingling in both legs and an electric sensation down the spine on neck flexion",
                "numbness spreading up from the {right|left} side of the body",
            ),
            (
                "MRI shows multiple periventricular white matter lesions",
                "there is a relative afferent pupillary defect",
                "CSF shows oligoclonal bands",
            ),
            (),
            (
                "Please assess for a demyelinating process.",
                "Requesting specialist review of possible multiple sclerosis.",
            ),
            SUBACUTE,
        ),
        Condition(
            "chronic migraine",
            (
                "recurrent one-sided throbbing headaches preceded by visual zigzags",
                "headaches on {16-25} days a month with light sensitivity and nausea",
            ),
            (
                "fundoscopy and the neurological examination are normal",
                "MRI brain is normal and the headache diary confirms medication overuse",
            ),
            (
                "despite propranolol and topiramate",
                "despite amitriptyline",
            ),
            (
                "Please advise on preventive treatment.",
                "Requesting headache clinic review.",
            ),
            CHRONIC,
        ),
        Condition(
            "peripheral neuropathy",
            (
                "numbness and burning in both feet spreading to the shins",
                "pins and needles in the hands and feet with unsteadiness in the dark",
            ),
            (
                "ankle reflexes are absent with stocking sensory loss",
                "nerve conduction studies show a length-dependent axonal neuropathy",
                "Romberg test is positive with reduced vibration sense",
            ),
            ("despite gabapentin",),
            (
                "Please investigate the cause of the neuropathy.",
                "Requesting nerve conduction review.",
            ),
            SUBACUTE,
        ),
        Condition(
            "myasthenia",
            (
                "drooping eyelids and double vision that worsen by evening",
                "fatigable weakness when chewing and slurred speech late in the day",
            ),
            (
                "acetylcholine receptor antibodies are positive",
                "ptosis worsens on sustained upgaze and improves with an ice pack",
            ),
            (),
            (
                "Please assess for a neuromuscular junction disorder.",
                "Requesting urgent neuromuscular review.",
            ),
            SUBACUTE,
        ),
        Condition(
            "transient ischemic attack",
            (
                "brief episodes of {right|left} arm weakness and slurred speech lasting {10-40} minutes",
                "repeated transient loss of vision in one eye like a curtain coming down",
            ),
            (
                "CT head is normal and carotid imaging shows {50-65}% stenosis",
                "examination is now normal with an ABCD2 score of {4-6}",
            ),
            (),
            (
                "Please see in the TIA clinic.",
                "Requesting urgent stroke prevention review.",
            ),
            ACUTE,
        ),
    ),
    "orthopedics": (
        Condition(
            "meniscal tear",
            (
                "knee locking and giving way after a twisting injury playing football",
                "medial knee pain with catching since pivoting at work",
            ),
            (
                "MRI shows a bucket-handle tear of the medial meniscus",
                "there is joint-line tenderness with a positive McMurray test",
                "there is a small effusion and a block to full extension",
            ),
            ("despite physiotherapy",),
            (
                "Please consider arthroscopy.",
                "Requesting surgical review of the knee.",
            ),
            SUBACUTE,
        ),
        Condition(
            "ligament rupture",
            (
                "knee instability since a skiing injury",
                "the knee giving way when changing direction after a netball fall",
            ),
            (
                "Lachman test is positive with a soft endpoint",
                "MRI confirms a complete anterior cruciate ligament rupture",
            ),
            ("despite a structured rehab program",),
            (
                "Please assess for ligament reconstruction.",
                "Requesting sports knee clinic review.",
            ),
            SUBACUTE,
        ),
        Condition(
            "hip osteoarthritis",
            (
                "groin pain on walking with stiffness after sitting",
                "hip pain limiting walking to {100-400} meters",
                "night pain in the {right|left} hip and difficulty putting on socks",
            ),
            (
                "X-ray shows severe joint space narrowing with osteophytes",
                "internal rotation of the hip is painful and reduced",
                "there is a fixed flexion deformity with a Trendelenburg gait",
            ),
            (
                "despite physiotherapy and regular analgesia",
                "despite a steroid injection",
            ),
            (
                "Please assess for joint replacement.",
                "Requesting arthroplasty review.",
            ),
            CHRONIC,
        ),
        Condition(
            "rotator cuff tear",
            (
                "shoulder pain and weakness lifting the arm after a fall",
                "inability to raise the {right|left} arm above shoulder height",
            ),
            (
                "the drop-arm test is positive",
                "ultrasound shows a full-thickness supraspinatus tear",
                "there is painful arc with weak external rotation",
            ),
            ("despite a subacromial injection",),
            (
                "Please assess for cuff repair.",
                "Requesting shoulder surgery opinion.",
            ),
            SUBACUTE,
        ),
        Condition(
            "scaphoid nonunion",
            (
                "persistent wrist pain after a fall on an outstretched hand",
                "painful, weak grip since falling off a bicycle",
            ),
            (
                "there is tenderness in the anatomical snuffbox",
                "repeat X-ray shows a scaphoid waist fracture that has not united",
                "CT shows a displaced fracture of the distal radius",
            ),
            ("despite {6-10} weeks in a cast",),
            (
                "Please assess for fixation.",
                "Requesting fracture clinic review.",
            ),
            SUBACUTE,
        ),
        Condition(
            "Achilles rupture",
            (
                "calf pain and weak push-off after feeling a snap at the heel playing squash",
                "a flat-footed gait since a sudden pop at the back of the ankle",
            ),
            (
                "Thompson test is positive with a palpable gap",
                "ultrasound shows a complete tendon rupture with a {2-5} cm gap",
            ),
            (),
            (
                "Please assess for tendon repair.",
                "Requesting urgent fracture clinic review.",
            ),
            ACUTE,
        ),
        Condition(
            "knee osteoarthritis",
            (
                "progressive knee pain with a bowing deformity",
                "knee pain on stairs with swelling and grinding",
            ),
            (
                "X-ray shows bone-on-bone medial compartment arthritis",
                "there is crepitus with a {10-20}-degree varus deformity",
            ),
            ("despite weight loss and physiotherapy",),
            (
                "Please assess for knee replacement.",
                "Requesting arthroplasty review.",
            ),
            CHRONIC,
        ),
    ),
    "pulmonology": (
        Condition(
            "COPD",
            (
                "a chronic productive cough and wheeze each winter",
                "breathlessness walking on the flat with a morning cough",
                "recurrent chest infections and wheeze",
            ),
            (
                "spirometry shows FEV1/FVC of 0.{52-66} with little reversibility",
                "FEV1 is {38-55}% predicted",
                "there is hyperinflation on chest X-ray",
            ),
            ("despite triple inhaler therapy", "despite tiotropium"),
            (
                "Please review for pulmonary rehabilitation.",
                "Requesting airway disease assessment.",
            ),
            CHRONIC,
        ),
        Condition(
            "lung nodule",
            (
                "a persistent cough with streaks of blood in the sputum",
                "hoarseness and coughing up blood",
                "a cough that has not settled and unexplained weight loss",
            ),
            (
                "CT shows a {11-24} mm spiculated nodule in the {right|left} upper lobe",
                "chest X-ray shows a hilar mass",
                "PET-CT shows an avid nodule in the {right|left} lower lobe",
            ),
            ("despite two courses of antibiotics",),
            (
                "Please arrange bronchoscopy.",
                "Requesting urgent lung cancer pathway review.",
            ),
            SUBACUTE,
        ),
        Condition(
            "interstitial lung disease",
            (
                "progressive dry cough and breathlessness",
                "breathlessness on exertion that has worsened steadily",
            ),
            (
                "there are fine bibasal velcro-like crackles with finger clubbing",
                "CT shows basal reticulation with honeycombing",
                "saturations drop to {84-89}% on walking",
                "DLCO is {36-52}% predicted",
            ),
            (),
            (
                "Please assess for interstitial lung disease.",
                "Requesting fibrosis clinic review.",
            ),
            CHRONIC,
        ),
        Condition(
            "obstructive sleep apnea",
            (
                "loud snoring with witnessed pauses in breathing and daytime sleepiness",
                "unrefreshing sleep, morning headaches and falling asleep while driving",
            ),
            (
                "the Epworth score is {14-21}",
                "overnight oximetry shows {25-48} desaturations per hour",
                "neck circumference is {43-48} cm",
            ),
            (),
            (
                "Please assess for CPAP.",
                "Requesting sleep study review.",
            ),
            CHRONIC,
        ),
        Condition(
            "severe asthma",
            (
                "nocturnal wheeze and chest tightness",
                "frequent attacks of wheeze needing oral steroids",
            ),
            (
                "peak flow varies by {25-40}% across the day",
                "blood eosinophils are 0.{6-9} x10^9/L with FeNO of {55-90} ppb",
            ),
            (
                "despite high-dose inhaled steroid",
                "despite montelukast and a combination inhaler",
            ),
            (
                "Please consider biologic therapy.",
                "Requesting difficult airways assessment.",
            ),
            CHRONIC,
        ),
        Condition(
            "pleural effusion",
            (
                "increasing breathlessness with a dull ache in the side of the chest",
                "breathlessness and reduced exercise tolerance",
            ),
            (
                "chest X-ray shows a large {right|left}-sided pleural effusion",
                "there is stony dullness and absent breath sounds at the {right|left} base",
            ),
            (),
            (
                "Please arrange pleural aspiration.",
                "Requesting pleural clinic review.",
            ),
            ACUTE,
        ),
        Condition(
            "bronchiectasis",
            (
                "a daily cough with large volumes of sputum",
                "recurrent chest infections with green sputum",
            ),
            (
                "CT shows dilated, thick-walled bronchi in both lower lobes",
                "sputum has repeatedly grown Pseudomonas",
            ),
            ("despite several antibiotic courses",),
            (
                "Please advise on airway clearance and long-term treatment.",
                "Requesting chest clinic review.",
            ),
            CHRONIC,
        ),
    ),
}

# Stable past history that would hint at a specialty if read carelessly. A note for one
# label only ever borrows history from the other five (plus the neutral list below).
# A "[tag]" prefix restricts an item by sex or age; see eligible().
BACKGROUND: dict[str, tuple[str, ...]] = {
    "cardiology": (
        "hypertension controlled on amlodipine",
        "[50+]a coronary stent placed {6-12} years ago",
        "a trace of mitral regurgitation on an old echo",
        "hypertension, well controlled",
    ),
    "dermatology": (
        "childhood eczema",
        "mild rosacea",
        "a benign mole removed years ago",
        "seborrheic keratoses",
        "an old fungal nail infection",
    ),
    "gastroenterology": (
        "a previous cholecystectomy",
        "mild reflux",
        "an appendectomy as a teenager",
        "irritable bowel syndrome in remission",
        "diverticulosis on a past scan",
    ),
    "neurology": (
        "[40+]migraine in early adulthood",
        "a remote concussion without sequelae",
        "restless legs",
        "a single febrile seizure in infancy",
    ),
    "orthopedics": (
        "[60+]a {right|left} knee replacement {4-9} years ago",
        "an old healed wrist fracture",
        "mild lumbar spondylosis",
        "a previous ACL reconstruction",
        "a bunion operation",
    ),
    "pulmonology": (
        "childhood asthma, now asymptomatic",
        "pneumonia {3-8} years ago",
        "a resolved episode of pleurisy",
        "an old TB contact screen that was negative",
    ),
}

NEUTRAL_BACKGROUND: tuple[str, ...] = (
    "type 2 diabetes",
    "hypothyroidism",
    "high cholesterol",
    "anxiety",
    "stage 3 chronic kidney disease",
    "depression",
    "glaucoma",
    "prediabetes",
    "[M]benign prostatic symptoms",
    "[F]anemia in pregnancy years ago",
    "obesity",
    "[F]a hysterectomy",
)

# Medications independent of the label; picked uniformly for every note.
MEDICATIONS: tuple[str, ...] = (
    "metformin",
    "levothyroxine",
    "atorvastatin",
    "sertraline",
    "ramipril",
    "amlodipine",
    "omeprazole",
    "a salbutamol inhaler",
    "vitamin D",
    "simvastatin",
    "lisinopril",
    "citalopram",
    "[F<50]the combined pill",
    "paracetamol as needed",
    "[M]tamsulosin",
    "allopurinol",
    "aspirin",
    "losartan",
)

SOCIAL: tuple[str, ...] = (
    "lifelong non-smoker",
    "ex-smoker",
    "smokes {5-20} a day",
    "drinks {4-14} units a week",
    "teetotal",
    "lives alone",
    "lives with a partner",
    "[50+]cares for a grandchild",
    "walks a dog daily",
)

OCCUPATIONS: tuple[str, ...] = (
    "a teacher",
    "[60+]a retired electrician",
    "a warehouse worker",
    "a bus driver",
    "an accountant",
    "a nurse",
    "[<30]a student",
    "a chef",
    "[60+]a retired farmer",
    "an office manager",
    "a delivery driver",
    "a hairdresser",
    "a software developer",
    "a cleaner",
    "[60+]a retired postal worker",
)

# Shared by all labels so that structure never reveals the label. Each renders as one to
# three sentences. Optional pieces (names ending in _c) render as "" or as a clause that
# attaches to the sentence before it.
TEMPLATES: tuple[str, ...] = (
    "{P} presents with {durhist} {sym}{tx_c}. {Find}{hx_c}. {Req}",
    "{Pshort}: {sym} {durfor}; {vitals}. {Find}{hx_c}. {Req}",
    "Thank you for seeing {p}, who has had {sym} {durfor}{tx_c}. {Find}{find2_c}{hx_c}. {Req}",
    "Referral: {p} with {durhist} {sym}. {Find}{ctx_c}. {Req}",
    "{P} reports {sym}, ongoing {durfor}, and takes {meds}. {Find}{tx_p}. {Req}",
    "Seen today: {p}, {social}, describing {sym} {durfor}. {Find}{hx_c}. {Req}",
    "{Pshort}, {vitals}, complains of {sym} {durfor}. {Find}, and {find2}{hx_c}. {Req}",
    "Primary care letter: {p} with a background of {hx} now has {sym} {durfor}. {Find}. {Req}",
    "{Sym} {durfor} in {p}{tx_c}. {Find}{ctx_c}. {Req}",
    "Dear colleague, I would be grateful if you could see {p} with {sym}{tx_c}. {Find}{hx_c}. {Req}",
    "Urgent review requested for {p}: {sym} over the past {dur}. {Find}{find2_c}{hx_c}.",
    "{P}, {occupation}, has noticed {sym} {durfor}. {Find}{ctx_c}. {Req}",
    "{Pshort} - Hx: {sym} {durfor}{tx_c}; PMH: {hx}. Exam/tests: {find}. {Req}",
    "{P} was seen in the practice with {sym}, which began {dur} ago{ctx_c}. {Find}{find2_c}. {Req}",
    "Ref {ref}: {article} {age}-year-old {noun} ({occupation}) with {sym} {durfor}. {Find}{hx_c}. {Req}",
    "{P}, {social}, has {sym}{tx_c}; on review, {find}{hx_c}. {Req}",
    "Please see {p} with {sym} {durfor}{tx_c}; {find}{hx_c}.",
)

_RANGE = re.compile(r"\{(\d+(?:\.\d+)?)-(\d+(?:\.\d+)?)\}")
_CHOICE = re.compile(r"\{([^{}|]+(?:\|[^{}|]+)+)\}")


@dataclass(frozen=True)
class Note:
    """One generated referral note and the skeleton used for near-duplicate control."""

    label: str
    text: str
    skeleton: tuple[str, int, int, int, int]


def expand(text: str, rng: random.Random) -> str:
    """Replace ``{a-b}`` ranges and ``{x|y}`` choices in ``text`` with random values."""

    def _range(match: re.Match[str]) -> str:
        low, high = match.group(1), match.group(2)
        decimals = len(low.split(".")[1]) if "." in low else 0
        scale = 10**decimals
        value = rng.randint(round(float(low) * scale), round(float(high) * scale))
        return f"{value / scale:.{decimals}f}" if decimals else str(value)

    text = _RANGE.sub(_range, text)
    return _CHOICE.sub(lambda m: rng.choice(m.group(1).split("|")), text)


def capitalize(text: str) -> str:
    """Upper-case the first character only (keeps acronyms such as ECG intact)."""
    return text[:1].upper() + text[1:]


def decapitalize(text: str) -> str:
    """Lower-case the first character unless the first word looks like an acronym."""
    first = text.split(" ", 1)[0]
    if len(first) > 1 and not first[1:].islower():
        return text
    return text[:1].lower() + text[1:]


def join_items(items: Sequence[str]) -> str:
    """Join phrases as 'a', 'a and b', or 'a, b and c'."""
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def indefinite(number: int) -> str:
    """The article 'a' or 'an' to use before a number spoken aloud (an 8, an 18, an 80)."""
    spoken = str(number)
    return "an" if spoken.startswith("8") or spoken in ("11", "18") else "a"


def duration_slots(units: Sequence[str], rng: random.Random) -> dict[str, str]:
    """Pick a duration compatible with the presentation and render its phrasings."""
    unit = rng.choice(list(units))
    low, high = {"day": (3, 13), "week": (2, 11), "month": (2, 18), "year": (2, 6)}[unit]
    n = rng.randint(low, high)
    plural = f"{n} {unit}s"
    durfor = rng.choice((f"for {plural}", f"over the past {plural}", f"for about {plural}"))
    return {"dur": plural, "durfor": durfor, "durhist": f"{indefinite(n)} {n}-{unit} history of"}


@dataclass(frozen=True)
class Patient:
    """An invented patient: only an age, a sex and a synthetic reference."""

    age: int
    female: bool
    ref: str


_TAG = re.compile(r"^\[(F|M|F<50|<30|40\+|50\+|60\+)\]")


def eligible(pool: Sequence[str], patient: Patient) -> list[str]:
    """Items of ``pool`` plausible for ``patient``, with any ``[tag]`` prefix stripped.

    Tags: ``[F]``/``[M]`` sex-specific, ``[F<50]`` women under 50, ``[<30]`` under 30,
    ``[40+]``/``[50+]``/``[60+]`` minimum age.
    """
    allowed: dict[str, bool] = {
        "F": patient.female,
        "M": not patient.female,
        "F<50": patient.female and patient.age < 50,
        "<30": patient.age < 30,
        "40+": patient.age >= 40,
        "50+": patient.age >= 50,
        "60+": patient.age >= 60,
    }
    items: list[str] = []
    for item in pool:
        match = _TAG.match(item)
        if match is None:
            items.append(item)
        elif allowed[match.group(1)]:
            items.append(item[match.end() :])
    return items


def new_patient(rng: random.Random) -> Patient:
    """Draw an age (19-89), a sex and a ``SYN-`` reference."""
    return Patient(rng.randint(19, 89), rng.random() < 0.5, f"SYN-{rng.randint(1000, 9999)}")


def patient_slots(patient: Patient, rng: random.Random) -> dict[str, str]:
    """The ways templates refer to the patient (subject, object, short form, article)."""
    age, ref = patient.age, patient.ref
    noun = rng.choice(("woman", "female patient") if patient.female else ("man", "male patient"))
    letter = "F" if patient.female else "M"
    article = indefinite(age).capitalize()
    return {
        "P": rng.choice(
            (
                f"{article} {age}-year-old {noun}",
                f"This {age}-year-old {noun}",
                f"Patient {ref} ({age}{letter})",
            )
        ),
        "p": rng.choice(
            (
                f"{article.lower()} {age}-year-old {noun}",
                f"this {age}-year-old {noun}",
                f"patient {ref} (aged {age})",
            )
        ),
        "Pshort": rng.choice(
            (f"{age}{letter}", f"{age}-year-old {noun}", f"{ref} ({age}{letter})", f"{letter}, {age}")
        ),
        "article": article.lower(),
        "age": str(age),
        "noun": noun,
        "ref": ref,
    }


def background(label: str, patient: Patient, rng: random.Random) -> list[str]:
    """Zero to two stable past-history items taken from other specialties or neutral ones."""
    count = rng.choices((0, 1, 2), weights=(1, 2, 1))[0]
    pool = [item for other in LABELS if other != label for item in BACKGROUND[other]]
    pool.extend(NEUTRAL_BACKGROUND)
    return [expand(item, rng) for item in rng.sample(eligible(pool, patient), count)]


def vitals(rng: random.Random) -> str:
    """Unremarkable observations, independent of the label."""
    parts = [
        f"BP {rng.randint(108, 148)}/{rng.randint(66, 92)}",
        f"temp {rng.randint(362, 374) / 10:.1f} C",
        f"BMI {rng.randint(20, 36)}",
    ]
    return ", ".join(rng.sample(parts, rng.randint(1, 3)))


def medications(patient: Patient, rng: random.Random) -> str:
    """One to three regular medications, independent of the label."""
    return join_items(rng.sample(eligible(MEDICATIONS, patient), rng.randint(1, 3)))


def social(patient: Patient, rng: random.Random) -> str:
    """One social-history phrase, independent of the label."""
    return expand(rng.choice(eligible(SOCIAL, patient)), rng)


def context_clause(patient: Patient, rng: random.Random) -> str:
    """A label-independent clause: medications, social history or observations."""
    choice = rng.randrange(4)
    if choice == 0:
        return f"medications: {medications(patient, rng)}"
    if choice == 1:
        return f"takes {medications(patient, rng)}"
    if choice == 2:
        return social(patient, rng)
    return f"observations: {vitals(rng)}"


def render_note(label: str, rng: random.Random) -> Note:
    """Draw one note for ``label``; the caller checks length and uniqueness."""
    cond_index = rng.randrange(len(CONDITIONS[label]))
    cond = CONDITIONS[label][cond_index]
    sym_index = rng.randrange(len(cond.symptoms))
    find_index = rng.randrange(len(cond.findings))
    template_index = rng.randrange(len(TEMPLATES))
    patient = new_patient(rng)

    sym = expand(cond.symptoms[sym_index], rng)
    find = expand(cond.findings[find_index], rng)
    find2 = expand(rng.choice([f for i, f in enumerate(cond.findings) if i != find_index]), rng)
    hx_items = background(label, patient, rng)
    hx_required = hx_items or [expand(rng.choice(eligible(NEUTRAL_BACKGROUND, patient)), rng)]
    tx = expand(rng.choice(cond.treatments), rng) if cond.treatments and rng.random() < 0.5 else ""
    hx_frame = rng.choice(
        ("; background of {}", "; PMH includes {}", "; also has {}, stable", "; past history of {}")
    )

    slots: dict[str, str] = {
        **patient_slots(patient, rng),
        **duration_slots(cond.units, rng),
        "sym": sym,
        "Sym": capitalize(sym),
        "find": decapitalize(find),
        "Find": capitalize(find),
        "find2": decapitalize(find2),
        "find2_c": f", and {decapitalize(find2)}" if rng.random() < 0.5 else "",
        "hx": join_items(hx_required),
        "hx_c": hx_frame.format(join_items(hx_items)) if hx_items else "",
        "tx_c": f" {tx}" if tx else "",
        "tx_p": f"; symptoms persist {tx}" if tx else "",
        "Req": rng.choice(cond.requests),
        "vitals": vitals(rng),
        "meds": medications(patient, rng),
        "social": social(patient, rng),
        "occupation": rng.choice(eligible(OCCUPATIONS, patient)),
        "ctx_c": "; " + context_clause(patient, rng) if rng.random() < 0.7 else "",
    }
    text = TEMPLATES[template_index].format(**slots)
    text = re.sub(r"\s+", " ", text).strip()
    return Note(label, text, (label, cond_index, template_index, sym_index, find_index))


def normalized(text: str) -> str:
    """Duplicate key: case-folded, digits masked, whitespace collapsed."""
    return re.sub(r"\s+", " ", re.sub(r"\d", "#", text.casefold())).strip()


def word_count(text: str) -> int:
    """Whitespace-delimited word count used for the 25-70 word bound."""
    return len(text.split())


def sentence_count(text: str) -> int:
    """Sentences, counted as '.', '!' or '?' followed by whitespace or the end of the note."""
    return len(re.findall(r"[.!?](?=\s|$)", text))


def skeleton_capacity(label: str) -> int:
    """Upper bound on distinct (condition, symptom, finding, template) skeletons for a label."""
    return len(TEMPLATES) * sum(len(c.symptoms) * len(c.findings) for c in CONDITIONS[label])


def balanced_labels(rows: int, rng: random.Random) -> list[str]:
    """A shuffled label sequence whose class counts differ by at most one."""
    order = list(LABELS)
    rng.shuffle(order)
    labels = [order[i % len(order)] for i in range(rows)]
    rng.shuffle(labels)
    return labels


def generate(
    rows: int,
    rng: random.Random,
    seen_text: set[str],
    seen_skeleton: set[tuple[str, int, int, int, int]],
) -> list[Note]:
    """Generate ``rows`` notes, rejecting any whose text or skeleton is already in the seen sets.

    The seen sets are updated in place, so calling this for training and then validation
    with the same sets guarantees the two splits are disjoint.
    """
    notes: list[Note] = []
    for label in balanced_labels(rows, rng):
        for _ in range(MAX_ATTEMPTS_PER_ROW):
            note = render_note(label, rng)
            key = normalized(note.text)
            if not MIN_WORDS <= word_count(note.text) <= MAX_WORDS:
                continue
            if not 1 <= sentence_count(note.text) <= MAX_SENTENCES:
                continue
            if key in seen_text or note.skeleton in seen_skeleton:
                continue
            seen_text.add(key)
            seen_skeleton.add(note.skeleton)
            notes.append(note)
            break
        else:
            raise RuntimeError(
                f"no fresh {label} note after {MAX_ATTEMPTS_PER_ROW} draws: the vocabulary has at"
                f" most {skeleton_capacity(label)} distinct {label} skeletons across both splits"
            )
    return notes


def to_row(note: Note) -> dict[str, list[dict[str, str]]]:
    """The OpenAI chat fine-tuning record for one note."""
    return {
        "messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": note.text},
            {"role": "assistant", "content": note.label},
        ]
    }


def write_jsonl(path: Path, notes: Sequence[Note]) -> None:
    """Write compact JSONL (one record per line, LF endings)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="\n") as handle:
        for note in notes:
            handle.write(json.dumps(to_row(note), ensure_ascii=False, separators=(",", ":")) + "\n")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line interface."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rows", type=int, default=360, help="training rows (default 360)")
    parser.add_argument("--seed", type=int, default=7, help="base seed for both splits (default 7)")
    parser.add_argument("--out", type=Path, default=Path("examples/triage.jsonl"))
    parser.add_argument("--validation-rows", type=int, default=0, help="validation rows (default 0: none)")
    parser.add_argument("--validation-out", type=Path, default=Path("examples/triage_validation.jsonl"))
    args = parser.parse_args(argv)
    if args.rows < 1 or args.validation_rows < 0:
        parser.error("--rows must be positive and --validation-rows non-negative")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Generate the training split and, if asked, a disjoint validation split."""
    args = parse_args(argv)
    seen_text: set[str] = set()
    seen_skeleton: set[tuple[str, int, int, int, int]] = set()
    # random.Random hashes string seeds with SHA-512, so output does not depend on
    # PYTHONHASHSEED, and the two splits get independent streams.
    train = generate(args.rows, random.Random(f"triage/{args.seed}/train"), seen_text, seen_skeleton)
    write_jsonl(args.out, train)
    print(f"wrote {len(train)} rows to {args.out}")
    if args.validation_rows:
        validation = generate(
            args.validation_rows,
            random.Random(f"triage/{args.seed}/validation"),
            seen_text,
            seen_skeleton,
        )
        write_jsonl(args.validation_out, validation)
        print(f"wrote {len(validation)} rows to {args.validation_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
