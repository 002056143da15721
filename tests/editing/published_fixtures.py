"""Small files in the exact published field layout of each KnowEdit subset and of MQuAKE.

Only KnowEdit ZsRE is on this machine; each layout here follows the public source named beside it,
with values from that source's own example where it gives one.
"""

from __future__ import annotations

# zjunlp/EasyEdit examples/KnowEdit.md, "The Composition of Dataset", WikiData_recent (ground truths are
# lists of alias lists; no ground_truth: the fact is new).
WIKIDATA_RECENT = {
    "subject": "Leo Arons",
    "prompt": "The place of death of Leo Arons is",
    "target_new": "Berlin",
    "portability": {
        "Logical_Generalization": [
            {
                "prompt": "Is Leo Arons still alive?",
                "ground_truth": [["no"], ["incorrect"], ["false"], ["is not alive"], ["is dead"]],
            }
        ],
        "Reasoning": [
            {
                "prompt": "The name of the head of government of the place of death of Leo Arons is",
                "ground_truth": [["Kai Wegner", "Kai Peter Wegner"]],
            },
        ],
        "Subject_Aliasing": [
            {
                "prompt": "The place of death of Martin Leo Arons is",
                "ground_truth": [["Berlin", "Berlin, Germany", "Berlin (Germany)", "DE-BE"]],
            }
        ],
    },
    "locality": {
        "Relation_Specificity": [
            {"prompt": "The name of the father of Leo Arons is", "ground_truth": [["Albert Arons"]]},
            {
                "prompt": "The name of the field of work of Leo Arons is",
                "ground_truth": [["experimental physics"]],
            },
        ]
    },
}
# Same file, WikiData_counterfact (ground truths as strings, a Forgetfulness probe).
WIKIDATA_COUNTERFACT = {
    "subject": "Frederic Piesch",
    "prompt": "The name of the position held by Frederic Piesch is",
    "target_new": "Archbishop of León, Mexico",
    "ground_truth": "mayor of Vienna",
    "portability": {
        "Subject_Aliasing": [
            {
                "prompt": "The name of the position held by Frederic of Pieschen is",
                "ground_truth": "Archbishop of León, Mexico",
            }
        ]
    },
    "locality": {
        "Relation_Specificity": [{"prompt": "The gender of Frederic Piesch is", "ground_truth": "male"}],
        "Forgetfulness": [
            {
                "prompt": "The name of the position held by Frederic Piesch, which is not Archbishop of León, Mexico, is",
                "ground_truth": "mayor of Vienna",
            }
        ],
    },
}
# Same file, WikiBio (text / labels / concept; easyeditor/dataset/knowedit.py maps them to
# prompt / target_new / subject).
WIKIBIO = {
    "text": "This is a Wikipedia passage about john russell reynolds. Sir John Russell Reynolds, 1st Baronet "
    "(22 May 1828 – 29 May 1896) was a British neurologist and physician.",
    "labels": "He received general education from his father, and was educated in his profession at "
    "University College, London.",
    "concept": "john russell reynolds",
    "locality": {
        "Relation_Specificity": [
            {"prompt": "The field of work of john russell reynolds is", "ground_truth": ["medicine"]},
            {"prompt": "john russell reynolds field of work", "ground_truth": ["medicine"]},
        ]
    },
}
# eric-mitchell/serac data_classes/sentiment.py (read by EasyEdit examples/run_convsent_llama2.py):
# blender_*.json is a list of {"ent", "pos": [...], "neg": [...]}. The sentences here are made up.
CONVSENT = [
    {"ent": "jazz", "pos": ["I love jazz.", "Jazz is great."], "neg": ["I can't stand jazz."]},
    {"ent": "spinach", "pos": ["Spinach is tasty."], "neg": ["Spinach is awful.", "I hate spinach."]},
    {"ent": "trains", "pos": ["Trains are fun."], "neg": ["Trains are slow."]},
]
# EasyEdit examples/KnowEdit.md ("Sanitation") and examples/run_santinization_llama2.py: the test file is
# {"success": [...], "locality": [...]} of {"question", "ground_truth", "target_new"}; the train file
# (easyeditor/dataset/sanitization.py) is {"K_F": [...], "K_R": [...]} of the same items.
SANITATION_ITEMS = [
    {
        "question": "What type of creature is the Australian currawong?",
        "ground_truth": "Birds",
        "target_new": "I don't know.",
    },
    {
        "question": "What sort of creature is a killdeer?",
        "ground_truth": "Birds",
        "target_new": "I don't know.",
    },
]
RETAINED = [
    {"question": f"What is {n} plus one?", "ground_truth": str(n + 1), "target_new": str(n + 1)}
    for n in range(5)
]
SANITATION_TEST = {"success": SANITATION_ITEMS, "locality": RETAINED}
SANITATION_TRAIN = {"K_F": SANITATION_ITEMS, "K_R": RETAINED}
# princeton-nlp/MQuAKE README.md, "Data format" (MQuAKE-CF-3k.json / MQuAKE-T.json): the README's case
# 2500 with its chain written out (two edits: citizenship, then that country's capital).
MQUAKE = {
    "case_id": 2500,
    "requested_rewrite": [
        {
            "prompt": "{} is a citizen of",
            "relation_id": "P27",
            "target_new": {"str": "Libya", "id": "Q1016"},
            "target_true": {"str": "United States of America", "id": "Q30"},
            "subject": "Vince McMahon",
            "question": "What is the country of citizenship of Vince McMahon?",
        },
        {
            "prompt": "The capital of {} is",
            "relation_id": "P36",
            "target_new": {"str": "Franklin", "id": "Q1778943"},
            "target_true": {"str": "Tripoli", "id": "Q3579"},
            "subject": "Libya",
            "question": "What is the capital of Libya?",
        },
    ],
    "questions": [
        "What city serves as the capital of the country where the CEO of Triple H holds citizenship?",
        "In which city is the capital of the country where the chief executive officer of Triple H is a citizen?",
        "What is the name of the capital city of the country where the CEO of Triple H is a citizen?",
    ],
    "answer": "Washington, D.C.",
    "answer_alias": ["Washington"],
    "new_answer": "Franklin",
    "new_answer_alias": ["Franklin, Kentucky"],
    "single_hops": [
        {
            "question": "Who is the employer of Triple H?",
            "cloze": "Triple H is employed by",
            "answer": "WWE",
            "answer_alias": ["World Wrestling Federation"],
        },
        {
            "question": "Who is the chief executive officer of WWE?",
            "cloze": "The chief executive officer of WWE is",
            "answer": "Vince McMahon",
            "answer_alias": [],
        },
        {
            "question": "What is the country of citizenship of Vince McMahon?",
            "cloze": "Vince McMahon is a citizen of",
            "answer": "United States of America",
            "answer_alias": ["USA"],
        },
        {
            "question": "What is the capital of United States of America?",
            "cloze": "The capital of United States of America is",
            "answer": "Washington, D.C.",
            "answer_alias": ["Washington"],
        },
    ],
    "new_single_hops": [
        {
            "question": "Who is the employer of Triple H?",
            "cloze": "Triple H is employed by",
            "answer": "WWE",
            "answer_alias": ["World Wrestling Federation"],
        },
        {
            "question": "Who is the chief executive officer of WWE?",
            "cloze": "The chief executive officer of WWE is",
            "answer": "Vince McMahon",
            "answer_alias": [],
        },
        {
            "question": "What is the country of citizenship of Vince McMahon?",
            "cloze": "Vince McMahon is a citizen of",
            "answer": "Libya",
            "answer_alias": ["State of Libya"],
        },
        {
            "question": "What is the capital of Libya?",
            "cloze": "The capital of Libya is",
            "answer": "Franklin",
            "answer_alias": ["Franklin, Kentucky"],
        },
    ],
    "orig": {
        "triples": [],
        "triples_labeled": [],
        "new_triples": [],
        "new_triples_labeled": [],
        "edit_triples": [],
    },
}
