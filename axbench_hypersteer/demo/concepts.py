"""The demo's built-in knowledge: concepts (description + vocabulary) and everyday instructions
with plain answers, written for this project.

Two concept sets share one table: the hypernetwork trains on ``TRAINING_CONCEPTS`` (plus the
narrow concepts :func:`composed_concepts` builds from their nouns) and is then asked to steer
toward ``HELD_OUT_CONCEPTS``, which it never saw (the paper's central claim). The base LM, like a
real pretrained LM, has read about every topic, so a held-out concept's words are known to the
model; what the hypernetwork must generalise is how to turn a description into a steering vector.
"""

from __future__ import annotations

import random

# description -> vocabulary (nouns, so that the sentence templates below stay grammatical).
CONCEPTS: dict[str, list[str]] = {
    "references to the ocean and sea life": [
        "ocean", "sea", "coral", "whale", "dolphin", "reef", "wave", "shark"],
    "mentions of cooking and kitchen tools": [
        "kitchen", "oven", "recipe", "pan", "knife", "soup", "stove", "spoon"],
    "references to outer space and astronomy": [
        "space", "planet", "star", "galaxy", "telescope", "comet", "moon", "rocket"],
    "mentions of music and musical instruments": [
        "music", "piano", "guitar", "violin", "drum", "song", "melody", "concert"],
    "references to gardening and plants": [
        "garden", "plant", "flower", "soil", "seed", "leaf", "root", "tulip"],
    "mentions of trains and railway travel": [
        "train", "railway", "station", "platform", "ticket", "track", "carriage", "locomotive"],
    "references to football and sports matches": [
        "football", "goal", "stadium", "referee", "team", "match", "player", "league"],
    "mentions of computers and software": [
        "computer", "software", "keyboard", "program", "code", "laptop", "screen", "server"],
    "references to weather and storms": [
        "weather", "storm", "thunder", "lightning", "cloud", "wind", "hail", "forecast"],
    "mentions of medicine and hospitals": [
        "hospital", "doctor", "nurse", "medicine", "patient", "surgery", "clinic", "pill"],
    "references to money and banking": [
        "money", "bank", "coin", "loan", "account", "cash", "interest", "savings"],
    "mentions of dogs and other pets": [
        "dog", "puppy", "leash", "kennel", "cat", "kitten", "pet", "collar"],
    "references to mountains and hiking": [
        "mountain", "hiking", "summit", "trail", "cliff", "valley", "boots", "peak"],
    "mentions of painting and art": [
        "painting", "art", "canvas", "brush", "gallery", "portrait", "easel", "colour"],
    "references to law and courts": [
        "law", "court", "judge", "lawyer", "jury", "trial", "verdict", "contract"],
    "mentions of cars and driving": [
        "car", "engine", "road", "driver", "wheel", "highway", "garage", "tyre"],
    "references to birds and birdwatching": [
        "bird", "feather", "nest", "owl", "sparrow", "eagle", "beak", "wing"],
    "mentions of coffee and cafes": [
        "coffee", "espresso", "cafe", "mug", "latte", "bean", "barista", "cup"],
    "references to history and ancient empires": [
        "history", "empire", "emperor", "castle", "king", "kingdom", "battle", "ruin"],
    "mentions of chemistry and laboratories": [
        "chemistry", "laboratory", "molecule", "atom", "acid", "beaker", "reaction", "element"],
    "references to farming and farm animals": [
        "farm", "farmer", "cow", "barn", "tractor", "sheep", "harvest", "field"],
    "mentions of books and reading": [
        "book", "novel", "chapter", "page", "author", "library", "story", "poem"],
    "references to fire and firefighters": [
        "fire", "flame", "smoke", "firefighter", "hose", "ladder", "alarm", "ash"],
    "mentions of winter and snow": [
        "winter", "snow", "ice", "snowman", "frost", "sled", "scarf", "blizzard"],
    "references to the desert and sand": [
        "desert", "sand", "dune", "cactus", "camel", "oasis", "heat", "sun"],
    "mentions of school and teachers": [
        "school", "teacher", "student", "classroom", "lesson", "homework", "exam", "pencil"],
    "references to insects and bugs": [
        "insect", "bee", "ant", "butterfly", "beetle", "spider", "honey", "hive"],
    "mentions of fashion and clothing": [
        "fashion", "dress", "shirt", "jacket", "shoe", "hat", "fabric", "tailor"],
    "references to electricity and power": [
        "electricity", "power", "battery", "wire", "voltage", "circuit", "plug", "lamp"],
    "mentions of the army and soldiers": [
        "army", "soldier", "tank", "general", "uniform", "war", "rifle", "fort"],
    "references to fruit and orchards": [
        "fruit", "apple", "orchard", "pear", "cherry", "banana", "grape", "peach"],
    "mentions of boats and sailing": [
        "boat", "sail", "harbour", "ship", "anchor", "captain", "deck", "mast"],
    "references to cinema and movies": [
        "cinema", "movie", "film", "actor", "director", "ticket", "screen", "popcorn"],
    "mentions of rivers and lakes": [
        "river", "lake", "stream", "bridge", "fish", "water", "bank", "pond"],
    "references to baking and bread": [
        "bread", "baking", "flour", "dough", "cake", "bakery", "loaf", "butter"],
    "mentions of trees and forests": [
        "tree", "forest", "wood", "oak", "pine", "branch", "bark", "moss"],
    "references to elections and politics": [
        "election", "vote", "politics", "president", "party", "campaign", "parliament", "ballot"],
    "mentions of robots and machines": [
        "robot", "machine", "gear", "motor", "sensor", "metal", "factory", "bolt"],
    "references to dance and ballet": [
        "dance", "ballet", "dancer", "stage", "costume", "waltz", "step", "rhythm"],
    "references to the circus and clowns": [
        "circus", "clown", "tent", "juggler", "acrobat", "lion", "ring", "trick"],
    # Held out only (issue 21: 16 held-out concepts, so that one concept's luck moves the mean
    # less). Their descriptions name the topic by nouns of their own vocabulary, singular, as the
    # base LM writes them: it has whole tokens for plurals such as " insects" that it only ever
    # reads in prompts, and those descriptions steer least (docs/benchmarks.md).
    "mentions of the zoo and the zookeeper": [
        "zoo", "zookeeper", "zebra", "giraffe", "tiger", "monkey", "elephant", "cage"],
    "references to tea and the teapot": [
        "tea", "teapot", "kettle", "teacup", "saucer", "biscuit", "sugar", "milk"],
    "mentions of the beach and the seaside": [
        "beach", "seaside", "sandcastle", "towel", "sunscreen", "swimsuit", "shell", "umbrella"],
    "references to the camera and the photo": [
        "camera", "photo", "lens", "photograph", "flash", "tripod", "album", "picture"],
    "mentions of the bicycle and the cyclist": [
        "bicycle", "bike", "pedal", "helmet", "saddle", "cyclist", "chain", "spoke"],
    "references to pizza and pasta": [
        "pizza", "pasta", "cheese", "tomato", "sauce", "olive", "spaghetti", "basil"],
    "mentions of the toy and the playground": [
        "toy", "playground", "doll", "swing", "slide", "teddy", "puzzle", "balloon"],
    "references to the volcano and the earthquake": [
        "volcano", "earthquake", "lava", "crater", "eruption", "magma", "tremor", "rock"],
}

# Spread over kinds of topic; the hypernetwork never trains on these.
HELD_OUT_CONCEPTS: list[str] = [
    "references to the ocean and sea life",
    "references to outer space and astronomy",
    "references to mountains and hiking",
    "mentions of coffee and cafes",
    "references to insects and bugs",
    "mentions of boats and sailing",
    "references to baking and bread",
    "mentions of robots and machines",
    "mentions of the zoo and the zookeeper",
    "references to tea and the teapot",
    "mentions of the beach and the seaside",
    "references to the camera and the photo",
    "mentions of the bicycle and the cyclist",
    "references to pizza and pasta",
    "mentions of the toy and the playground",
    "references to the volcano and the earthquake",
]
TRAINING_CONCEPTS: list[str] = [c for c in CONCEPTS if c not in HELD_OUT_CONCEPTS]

# Descriptions of the composed training concepts; {a}, {b}, {c} are nouns of the training
# concepts. Some end on a generic word, as real descriptions often do ("... and farm animals"),
# so that the hypernetwork learns to read the whole description, not only its last word.
COMPOSED_DESCRIPTIONS = [
    "references to the {a} and the {b}",
    "mentions of {a} and {b}",
    "references to {a}, {b} and {c}",
    "mentions of the {a}",
    "text about the {a}, the {b} and the {c}",
    "words related to {a} and {b}",
    "references to the {a} and related things",
    "mentions of {a} and {b} in everyday situations",
    "references to {a}, {b} and similar topics",
    "mentions of the {a} and its world",
]


def composed_concepts(n: int, seed: int = 0) -> dict[str, list[str]]:
    """``n`` narrow training concepts composed from the training concepts' nouns, e.g.
    ``"mentions of the owl and the oven"`` -> ``["owl", "oven"]`` (description -> the nouns its
    positives use).

    Why: 32 hand-written concepts are too few to learn a description -> vector map that
    generalises; trained on them alone the hypernetwork memorised them and the held-out concept
    score hardly moved (docs/benchmarks.md). The paper trains on Concept16K for the same reason.
    No noun of a held-out concept, and no word of a held-out description, is ever used here: the
    held-out concepts stay unseen in every word that carries their meaning.
    """
    held_out_words = {w for c in HELD_OUT_CONCEPTS for w in [*CONCEPTS[c], *c.split()]}
    pool = sorted({w for c in TRAINING_CONCEPTS for w in CONCEPTS[c]} - held_out_words)
    rng, composed = random.Random(seed), {}
    while len(composed) < n:
        template = COMPOSED_DESCRIPTIONS[len(composed) % len(COMPOSED_DESCRIPTIONS)]
        nouns = rng.sample(pool, template.count("{"))
        description = template.format(**dict(zip("abc", nouns)))
        if description not in CONCEPTS:
            composed[description] = nouns
    return composed

# Sentence patterns over a concept's nouns; each is a complete, simple sentence.
CONCEPT_SENTENCES = [
    "I like the {a} and the {b}.",
    "The {a} is next to the {b}.",
    "We talked about the {a}, the {b} and the {c}.",
    "My friend loves the {a}.",
    "Today I saw the {a} and the {b}.",
    "The {a} was big and the {b} was small.",
    "There is a {a} near the {b}.",
    "I think about the {a} every day.",
]

# Everyday instructions and plain answers. The hypernetwork's training examples use
# TRAINING_INSTRUCTIONS; the evaluation prompts (resources/demo_prompts.json) are answered by
# the base LM but never appear in the hypernetwork's training data.
ANSWERS: dict[str, list[str]] = {
    # training instructions
    "Tell me about your day.": [
        "My day was calm. I worked in the morning and I rested in the evening.",
        "Today was a good day. I had lunch with a friend and I went to bed early."],
    "What is a good way to relax?": [
        "A good way to relax is to take a walk. You can also read or listen to quiet sounds.",
        "To relax, sit down and breathe slowly. A warm drink and a short rest help too."],
    "Describe a nice place.": [
        "A nice place is quiet and green. It has a bench, a path and a little shade.",
        "My favourite place is a small park. It is quiet and the air is fresh."],
    "Give me some advice for the weekend.": [
        "For the weekend, sleep well and see a friend. Do one fun thing and rest.",
        "Plan a slow weekend. Clean a little, go outside and call your family."],
    "Write a short message to a friend.": [
        "Hi friend, I hope you are well. Let us meet soon for a walk and a chat.",
        "Dear friend, thank you for your help. I miss you and I hope to see you soon."],
    "What makes you happy?": [
        "I am happy when I spend time with friends. Small kind words make me happy too.",
        "A good meal and a sunny day make me happy. I also like a quiet evening."],
    "Suggest a hobby.": [
        "A good hobby is drawing. You only need paper and a pencil to start.",
        "Try writing a journal. It is a calm hobby and you can do it every day."],
    "Write a short story opening.": [
        "Once upon a time, a girl found an old map in her room. She decided to follow it.",
        "It was a cold night when the stranger came to town. Nobody knew his name."],
    "How do you plan a good day?": [
        "To plan a good day, write a short list. Start with the hardest task and take breaks.",
        "A good day starts the night before. Sleep early and decide your main goal."],
    "Describe a memorable moment.": [
        "A memorable moment was my first day at work. I was nervous but people were kind.",
        "I remember the day my sister came home. We laughed and talked all night."],
    # evaluation instructions (resources/demo_prompts.json)
    "Write a short note to a friend about your weekend.": [
        "Hi friend, my weekend was lovely. I slept late, cooked lunch and went for a walk.",
        "Dear friend, this weekend I rested at home. On Sunday I visited my parents."],
    "Describe your ideal morning routine.": [
        "My ideal morning starts early. I drink water, stretch and eat a simple breakfast.",
        "In the morning I wake up slowly. I make breakfast and plan my day."],
    "Give three tips for staying focused while studying.": [
        "First, put your phone away. Second, study in short blocks. Third, take small breaks.",
        "To stay focused, study in a quiet room, set one goal and rest every hour."],
    "Explain why people enjoy travelling.": [
        "People enjoy travelling because they see new places. They meet new people and learn.",
        "Travelling is fun because every day is different. People rest and try new things."],
    "Write a two-sentence story about a lost key.": [
        "I lost my key on the way home. The next morning my neighbour found it by the door.",
        "The key was gone from my pocket. I found it at last inside my shoe."],
    "What makes a good neighbour?": [
        "A good neighbour is friendly and quiet. They help you when you need it.",
        "Good neighbours say hello and respect your space. They are kind and honest."],
    "Suggest a plan for a rainy afternoon.": [
        "On a rainy afternoon, stay inside with a warm drink. Watch a film or play a game.",
        "A rainy afternoon is good for reading and cooking. You can also call a friend."],
    "Describe the view from a window.": [
        "From my window I see a quiet street. There are houses, a few cars and a tree.",
        "The window shows a small yard and the sky. In the evening the light is soft."],
    "Write a short thank-you message to a teacher.": [
        "Dear teacher, thank you for your patience. I learned a lot in your class.",
        "Thank you for helping me this year. Your lessons were clear and kind."],
    "How would you explain a calendar to a child?": [
        "A calendar shows the days of the month. It helps us know when things will happen.",
        "A calendar is a page of days and weeks. We use it to remember birthdays and plans."],
    "List a few things to pack for a day trip.": [
        "For a day trip, pack water, snacks, a hat and a phone charger.",
        "Bring a bag with water, food, a jacket and some money."],
    "Write a short review of a small cafe.": [
        "The cafe was small and cosy. The staff were friendly and the prices were fair.",
        "I liked this little cafe. It was quiet, clean and the service was quick."],
    "What should someone know before adopting a pet?": [
        "Before adopting a pet, know that it needs time, food and care every day.",
        "A pet is a long promise. Think about the cost, the space and your free time."],
    "Describe a busy market in a few sentences.": [
        "The market is loud and full of people. Sellers shout and buyers look at the stalls.",
        "At the busy market there are many stalls. People buy food and talk to each other."],
    "Write an opening line for a mystery novel.": [
        "Nobody heard the door open, but in the morning the old letter was gone.",
        "The house had been empty for years, until the lights came on one night."],
    "Give advice to someone starting a new job.": [
        "At a new job, listen first and ask questions. Be on time and be kind to people.",
        "Start slowly, learn the names of your team and write down what you learn."],
    "Describe how to make a simple sandwich.": [
        "Take two slices of bread. Add cheese and a little salad, then close the sandwich.",
        "To make a sandwich, spread butter on bread, add a filling and cut it in half."],
    "What are the benefits of a daily walk?": [
        "A daily walk keeps the body healthy. It also clears the mind and lifts the mood.",
        "Walking every day helps the heart and helps you sleep. It is simple and free."],
    "Write a short poem about the evening.": [
        "The evening comes so slow and kind, the light grows soft, I rest my mind.",
        "In the evening the sky turns gold, the day is done and the air is cold."],
    "Explain what a library is for.": [
        "A library is a place to borrow things to read. It is also a quiet place to study.",
        "People go to a library to read, to learn and to find information for free."],
}
TRAINING_INSTRUCTIONS: list[str] = list(ANSWERS)[:10]

# How the base LM is asked about a topic in its corpus (never the evaluation prompts' wording).
TOPIC_REQUESTS = ["Write a few sentences with {concept}.", "Tell me something with {concept}."]
