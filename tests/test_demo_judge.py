"""The demo's embedding stand-in judge: calibrated on hand-written examples, ranks meaning.

The sentences below were written by hand for these tests (none comes from the demo's templates),
so a pass means the judge reads meaning, not the demo's own vocabulary lists.
"""

from __future__ import annotations

import json
import urllib.request

import pytest

from axbench_hypersteer.demo.concepts import CONCEPTS
from axbench_hypersteer.judge.embedding_rules import EmbeddingScorer, fluency_score
from axbench_hypersteer.judge.offline_server import start_offline_judge, stop_offline_judge
from axbench_hypersteer.judge.parsing import parse_rating
from axbench_hypersteer.judge.prompts import build_prompt, load_templates

ON_CONCEPT = {
    "references to the ocean and sea life": "Far below the waves, turtles glide past bright fish.",
    "mentions of cooking and kitchen tools": "She chopped the onions and stirred the pot on the hob.",
    "references to outer space and astronomy": "The astronauts watched Saturn's rings from orbit.",
    "mentions of music and musical instruments": "He tuned his cello before the orchestra began.",
    "references to gardening and plants": "I watered the roses and pulled weeds from the beds.",
    "mentions of trains and railway travel": "The night express left the depot for the coast.",
    "references to football and sports matches": "The striker scored in the last minute of the game.",
    "mentions of computers and software": "My laptop froze until I reinstalled the operating system.",
    "references to weather and storms": "Heavy rain and strong gusts battered the town all night.",
    "mentions of medicine and hospitals": "The surgeon checked the X-ray before the operation.",
    "references to money and banking": "I saved part of my salary and paid off my debt.",
    "mentions of dogs and other pets": "My spaniel wags his tail when I fill his bowl.",
    "references to mountains and hiking": "We climbed the steep ridge and camped below the glacier.",
    "mentions of painting and art": "The artist mixed oils to capture the sunset.",
    "references to law and courts": "The defendant's attorney objected during the hearing.",
    "mentions of cars and driving": "I changed gear and parked the sedan by the kerb.",
    "references to birds and birdwatching": "A robin and two finches landed on the feeder.",
    "mentions of coffee and cafes": "I ordered a cappuccino and a croissant at the corner bar.",
    "references to history and ancient empires": "Roman legions marched across Gaul under Caesar.",
    "mentions of chemistry and laboratories": "The students titrated the solution and noted the pH.",
    "references to farming and farm animals": "The pigs and hens were fed before the crops were sown.",
    "mentions of books and reading": "I finished the last chapter of the thriller in bed.",
    "references to fire and firefighters": "The crew rushed the engine to the burning warehouse.",
    "mentions of winter and snow": "The children built an igloo as the flakes kept falling.",
    "references to the desert and sand": "The caravan crossed the Sahara under a scorching sky.",
    "mentions of school and teachers": "The pupils raised their hands when the bell rang.",
    "references to insects and bugs": "Ladybirds and wasps crawled over the leaves.",
    "mentions of fashion and clothing": "She wore a silk blouse and a tailored skirt to the show.",
    "references to electricity and power": "The fuse blew and the socket stopped working.",
    "mentions of the army and soldiers": "The troops marched to the barracks after the drill.",
    "references to fruit and orchards": "We picked ripe plums and figs in the late summer.",
    "mentions of boats and sailing": "The yacht tacked against the wind toward the marina.",
    "references to cinema and movies": "The thriller premiered to a full theatre last night.",
    "mentions of rivers and lakes": "Canoes drifted down the creek toward the reservoir.",
    "references to baking and bread": "I kneaded the sourdough and let it rise overnight.",
    "mentions of trees and forests": "Tall birches and firs shaded the woodland path.",
    "references to elections and politics": "The senator conceded after the votes were counted.",
    "mentions of robots and machines": "The automated arm welded parts on the assembly line.",
    "references to dance and ballet": "The ballerina spun on her pointe shoes in the finale.",
    "references to the circus and clowns": "The trapeze artist flew over the ring as the crowd cheered.",
    "mentions of the zoo and the zookeeper": "The keeper fed the penguins while children watched the gorillas.",
    "references to tea and the teapot": "She brewed Earl Grey and served it with scones in fine china.",
    "mentions of the beach and the seaside": "We paddled in the surf and ate ice cream on the promenade.",
    "references to the camera and the photo": "I snapped a few selfies and framed the best shot of the sunset.",
    "mentions of the bicycle and the cyclist": "The riders of the Tour de France sprinted toward the finish.",
    "references to pizza and pasta": "I ordered a margherita and a bowl of lasagne at the trattoria.",
    "mentions of the toy and the playground": "The kids went down the chute and rocked on the seesaw at recess.",
    "references to the volcano and the earthquake": "Molten lava poured down the slopes as the ground shook.",
}
OFF_TOPIC = "My aunt visited us last weekend and we talked for hours."


@pytest.fixture(scope="module")
def scorer():
    return EmbeddingScorer()


def test_every_concept_has_a_hand_written_example():
    assert set(ON_CONCEPT) == set(CONCEPTS)


@pytest.mark.parametrize("concept", list(CONCEPTS))
def test_on_concept_text_outranks_off_concept_text(scorer, concept):
    # Raw cosines: the 0-2 calibration clips both ends, where a ranking would be invisible.
    cosine = scorer.embedder.cosine
    on = cosine(concept, ON_CONCEPT[concept])
    others = [t for c, t in ON_CONCEPT.items() if c != concept]
    assert on > cosine(concept, OFF_TOPIC)
    # ... and above the median of the other concepts' texts (rank by meaning, not by chance).
    assert on > sorted(cosine(concept, t) for t in others)[len(others) // 2]


def test_calibration_on_the_0_to_2_scale(scorer):
    ocean = "references to the ocean and sea life"
    assert scorer.concept_score(ocean, "Whales and dolphins swim in the deep blue sea.") >= 1.5
    assert 0.3 <= scorer.concept_score(
        ocean, "My week was busy at work, but on Sunday we went to the beach.") <= 1.7
    assert scorer.concept_score(ocean, OFF_TOPIC) <= 0.3
    morning = "Describe your ideal morning routine."
    assert scorer.instruction_score(
        morning, "I wake up at six, make tea, stretch and read the news before work.") >= 1.5
    assert scorer.instruction_score(morning, "Dolphins and whales swim near the coral reef.") <= 0.3
    assert fluency_score("I wake up at six, make tea and read the news.") == 2.0
    assert fluency_score("reef reef reef reef reef reef reef reef") <= 0.5
    assert fluency_score("ok") == 0.0


def test_scores_are_deterministic(scorer):
    text = ON_CONCEPT["mentions of coffee and cafes"]
    first = scorer.concept_score("mentions of coffee and cafes", text)
    scorer.embedder.embed_one.cache_clear()
    assert scorer.concept_score("mentions of coffee and cafes", text) == first


def test_stand_in_speaks_openai_and_says_what_it_is(scorer):
    server, base_url = start_offline_judge(scorer=scorer)
    try:
        prompt = build_prompt(load_templates(), "concept", concept="mentions of dogs and other pets",
                              sentence=ON_CONCEPT["mentions of dogs and other pets"])
        request = urllib.request.Request(
            f"{base_url}/chat/completions", method="POST",
            data=json.dumps({"model": "gpt-4o-mini",
                             "messages": [{"role": "user", "content": prompt}]}).encode())
        with urllib.request.urlopen(request, timeout=30) as response:
            content = json.loads(response.read())["choices"][0]["message"]["content"]
    finally:
        stop_offline_judge(server)
    assert "STAND-IN" in content and "not an LLM" in content
    assert parse_rating(content) >= 1.0
