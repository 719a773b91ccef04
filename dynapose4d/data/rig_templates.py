"""The synthetic scenes' templates: plain functions `build(rng) -> Rig` (a person, a four-legged animal, a desk
lamp, a random tree, a hand, a bird), each drawing its proportions, pose and motion ranges from the seeded
generator (`dynapose4d.data.rig` describes the rig).
"""

from __future__ import annotations

import math

import numpy as np

from dynapose4d.data.rig import Builder, Rig, hinge, random_unit, unit, yaw


def humanoid(rng: np.random.Generator) -> Rig:
    """A person (14 keypoints) facing +z in an A-pose; limbs swing, elbows/knees bend, head nods and turns."""
    u = rng.uniform
    b = Builder(rng)
    torso, neck_len, head_r = u(0.45, 0.6), u(0.07, 0.12), u(0.09, 0.13)
    sw, hw = u(0.15, 0.22), u(0.08, 0.12)
    upper, fore, thigh, shin = u(0.24, 0.33), u(0.22, 0.30), u(0.36, 0.48), u(0.35, 0.46)
    r_arm, r_leg, r_torso = u(0.035, 0.055), u(0.05, 0.075), u(0.09, 0.15)
    spread = math.radians(u(12.0, 40.0))  # arm angle from the vertical
    leg_spread = math.radians(u(2.0, 12.0))

    b.joint("pelvis", None, [0, 0, 0], keypoint=False)
    b.joint("spine", "pelvis", [0, 0, 0], keypoint=False)
    b.joint("neck", "spine", [0, torso, 0])
    b.joint("nod", "neck", [0, torso, 0], keypoint=False)
    b.joint("head", "nod", [0, torso + neck_len + head_r, 0])
    for s, side in (("l", 1), ("r", -1)):
        sh = np.array([side * sw, torso - 0.04, 0.0])
        arm = np.array([side * math.sin(spread), -math.cos(spread), 0.0])
        b.joint(f"{s}_shoulder", "neck", sh)
        b.joint(f"{s}_elbow", f"{s}_shoulder", sh + upper * arm)
        b.joint(f"{s}_wrist", f"{s}_elbow", sh + (upper + fore) * arm)
        b.joint(f"{s}_hand", f"{s}_wrist", sh + (upper + fore + u(0.07, 0.1)) * arm, keypoint=False)
        hip = np.array([side * hw, -0.03, 0.0])
        leg = np.array([side * math.sin(leg_spread), -math.cos(leg_spread), 0.0])
        b.joint(f"{s}_hip", "pelvis", hip)
        b.joint(f"{s}_knee", f"{s}_hip", hip + thigh * leg)
        ankle = hip + (thigh + shin) * leg
        b.joint(f"{s}_ankle", f"{s}_knee", ankle)
        b.joint(f"{s}_toe", f"{s}_ankle", ankle + np.array([0.0, -0.03, u(0.1, 0.15)]), keypoint=False)

    b.bone("spine", "neck", r_torso, r_torso * u(1.0, 1.25), group="torso")
    b.bone("nod", "head", r_arm * 0.9, group="head")
    b.sphere("head", head_r, group="head")
    for s, side in (("l", 1), ("r", -1)):
        b.bone("neck", f"{s}_shoulder", r_arm * 1.3, r_arm * 1.2, group="shoulder", side=side)
        b.bone(f"{s}_shoulder", f"{s}_elbow", r_arm * 1.1, r_arm, group="arm", side=side)
        b.bone(f"{s}_elbow", f"{s}_wrist", r_arm, r_arm * 0.85, group="forearm", side=side)
        b.bone(f"{s}_wrist", f"{s}_hand", r_arm * 0.95, r_arm * 1.1, group="hand", side=side)
        b.bone("pelvis", f"{s}_hip", r_leg * 1.25, r_leg * 1.15, group="hips", side=side)
        b.bone(f"{s}_hip", f"{s}_knee", r_leg * 1.15, r_leg, group="thigh", side=side)
        b.bone(f"{s}_knee", f"{s}_ankle", r_leg, r_leg * 0.75, group="shin", side=side)
        b.bone(f"{s}_ankle", f"{s}_toe", r_leg * 0.7, r_leg * 0.6, group="foot", side=side)

    X, Y, Z = np.eye(3)
    b.move("pelvis", Y, -40, 40)  # the whole body turns
    b.move("spine", X, -20, 20)  # lean forwards / backwards
    b.move("spine", Y, -30, 30)  # twist
    b.move("nod", X, -30, 30)
    b.move("nod", Y, -45, 45)
    walk = rng.uniform() < 0.5  # half the seeds swing arms and legs in opposition, like walking
    ph = rng.uniform(0, 2 * math.pi)
    for s, side in (("l", 1), ("r", -1)):
        arm = b.p(f"{s}_elbow") - b.p(f"{s}_shoulder")
        b.move(f"{s}_shoulder", hinge(arm, Z), -70, 70, phase=(ph + (side > 0) * math.pi) if walk else None)
        b.move(f"{s}_shoulder", hinge(arm, [side, 0, 0]), -15, 60)  # raise sideways
        b.move(f"{s}_elbow", hinge(arm, Z), 0, 110)
        b.move(f"{s}_wrist", hinge(arm, Z), -30, 30)
        b.move(f"{s}_hip", hinge(-Y, Z), -45, 50, phase=(ph + (side < 0) * math.pi) if walk else None)
        b.move(f"{s}_hip", hinge(-Y, [side, 0, 0]), -5, 25)
        b.move(f"{s}_knee", hinge(-Y, -Z), 0, 90)
        b.move(f"{s}_ankle", hinge(-Y, Z), -20, 20)

    skeleton = [("head", "neck"), ("neck", "l_shoulder"), ("neck", "r_shoulder"),
                ("l_shoulder", "l_elbow"), ("l_elbow", "l_wrist"), ("r_shoulder", "r_elbow"), ("r_elbow", "r_wrist"),
                ("l_shoulder", "l_hip"), ("r_shoulder", "r_hip"), ("l_hip", "r_hip"),
                ("l_hip", "l_knee"), ("l_knee", "l_ankle"), ("r_hip", "r_knee"), ("r_knee", "r_ankle")]
    order = ["head", "neck", "l_shoulder", "r_shoulder", "l_elbow", "r_elbow", "l_wrist", "r_wrist",
             "l_hip", "r_hip", "l_knee", "r_knee", "l_ankle", "r_ankle"]
    return b.rig(skeleton, tone_axis=Z, order=order).rotated(yaw(u(-35.0, 35.0)))


def quadruped(rng: np.random.Generator) -> Rig:
    """A four-legged animal (17 keypoints incl. ears and a two-segment tail) facing +x, seen from the side."""
    u = rng.uniform
    b = Builder(rng)
    body, leg_up, leg_lo, H = u(0.6, 1.0), u(0.2, 0.3), u(0.2, 0.32), 0.0
    neck_len, head_r, snout = u(0.2, 0.45), u(0.08, 0.12), u(0.1, 0.2)
    r_body, r_leg, bw = u(0.1, 0.17), u(0.035, 0.055), u(0.06, 0.1)
    neck_dir = unit([math.cos(math.radians(u(30, 75))), math.sin(math.radians(u(30, 75))), 0.0])
    tail_dir = unit([-1.0, u(-0.6, 0.8), 0.0])
    tail_len = u(0.15, 0.35)

    b.joint("spine", None, [0, H, 0], keypoint=False)
    b.joint("withers", "spine", [body / 2, H + 0.02, 0])
    b.joint("rump", "spine", [-body / 2, H, 0])
    b.joint("neck_base", "withers", b.p("withers"), keypoint=False)
    b.joint("neck", "neck_base", b.p("withers") + neck_len * neck_dir)
    b.joint("head", "neck", b.p("neck") + np.array([0.05, 0.04, 0.0]))
    b.joint("nose", "head", b.p("head") + snout * unit([1.0, u(-0.8, -0.1), 0.0]) + [head_r * 0.5, 0, 0])
    for s, side in (("l", 1), ("r", -1)):  # facing +x with +y up, the animal's left is -z
        b.joint(f"{s}_ear", "head", b.p("head") + [u(-0.06, 0.0), head_r + u(0.03, 0.08), -side * head_r * 0.6])
    b.joint("tail_base", "rump", b.p("rump"), keypoint=False)
    b.joint("tail_mid", "tail_base", b.p("rump") + tail_len * tail_dir)
    b.joint("tail_tip", "tail_mid", b.p("tail_mid") + tail_len * unit(tail_dir + [0, u(-0.5, 0.5), 0]))
    for s, side in (("l", 1), ("r", -1)):
        z = -side * bw
        sh = b.p("withers") + [0.0, -r_body * 0.5, z]
        b.joint(f"{s}f_shoulder", "withers", sh, keypoint=False)
        b.joint(f"{s}f_elbow", f"{s}f_shoulder", sh + [0.02, -leg_up - r_body * 0.5, 0.0])
        b.joint(f"{s}f_paw", f"{s}f_elbow", b.p(f"{s}f_elbow") + [0.0, -leg_lo, 0.0])
        hp = b.p("rump") + [0.0, -r_body * 0.5, z]
        b.joint(f"{s}h_hip", "rump", hp, keypoint=False)
        b.joint(f"{s}h_knee", f"{s}h_hip", hp + [0.06, -leg_up - r_body * 0.5, 0.0])
        b.joint(f"{s}h_paw", f"{s}h_knee", b.p(f"{s}h_knee") + [-0.05, -leg_lo, 0.0])

    b.bone("spine", "withers", r_body, r_body * u(0.95, 1.15), group="body")
    b.bone("spine", "rump", r_body, r_body * u(0.85, 1.05), group="body")
    b.bone("neck_base", "neck", r_body * 0.6, r_body * 0.45, group="neck")
    b.sphere("head", head_r, group="head")
    b.bone("head", "nose", head_r * 0.7, head_r * 0.4, group="snout")
    for s, side in (("l", 1), ("r", -1)):
        b.bone("head", f"{s}_ear", head_r * 0.35, head_r * 0.15, group="ear", side=side)
    b.bone("tail_base", "tail_mid", r_leg * 0.9, r_leg * 0.7, group="tail")
    b.bone("tail_mid", "tail_tip", r_leg * 0.7, r_leg * 0.4, group="tail")
    for s, side in (("l", 1), ("r", -1)):
        b.bone("withers", f"{s}f_shoulder", r_leg * 1.4, group="front_leg", side=side)
        b.bone(f"{s}f_shoulder", f"{s}f_elbow", r_leg * 1.4, r_leg, group="front_leg", side=side)
        b.bone(f"{s}f_elbow", f"{s}f_paw", r_leg, r_leg * 0.9, group="front_paw", side=side)
        b.bone("rump", f"{s}h_hip", r_leg * 1.6, group="hind_leg", side=side)
        b.bone(f"{s}h_hip", f"{s}h_knee", r_leg * 1.6, r_leg, group="hind_leg", side=side)
        b.bone(f"{s}h_knee", f"{s}h_paw", r_leg, r_leg * 0.9, group="hind_paw", side=side)

    X, Y, Z = np.eye(3)
    b.move("spine", Y, -35, 35)
    b.move("spine", Z, -10, 10)
    b.move("neck_base", hinge(neck_dir, Y), -35, 25)
    b.move("neck_base", Y, -35, 35)
    b.move("neck", Z, -30, 30)
    b.move("head", Y, -30, 30)
    b.move("tail_base", Y, -50, 50)
    b.move("tail_base", Z, -30, 30)
    b.move("tail_mid", Y, -40, 40)
    gait = rng.uniform(0, 2 * math.pi)
    for s, side in (("l", 1), ("r", -1)):
        b.move(f"{s}f_shoulder", Z, -45, 45, phase=gait + (side > 0) * math.pi)
        b.move(f"{s}f_elbow", hinge(-Y, -X), 0, 80)
        b.move(f"{s}h_hip", Z, -45, 45, phase=gait + (side < 0) * math.pi)
        b.move(f"{s}h_knee", hinge(-Y, X), 0, 60)

    skeleton = [("nose", "head"), ("head", "l_ear"), ("head", "r_ear"), ("head", "neck"), ("neck", "withers"),
                ("withers", "rump"), ("rump", "tail_mid"), ("tail_mid", "tail_tip"),
                ("withers", "lf_elbow"), ("lf_elbow", "lf_paw"), ("withers", "rf_elbow"), ("rf_elbow", "rf_paw"),
                ("rump", "lh_knee"), ("lh_knee", "lh_paw"), ("rump", "rh_knee"), ("rh_knee", "rh_paw")]
    facing = rng.choice([0.0, 180.0]) + u(-35.0, 35.0)
    order = ["nose", "head", "l_ear", "r_ear", "neck", "withers", "rump", "tail_mid", "tail_tip",
             "lf_elbow", "lf_paw", "rf_elbow", "rf_paw", "lh_knee", "lh_paw", "rh_knee", "rh_paw"]
    return b.rig(skeleton, tone_axis=-Y, order=order).rotated(yaw(facing))


def lamp(rng: np.random.Generator) -> Rig:
    """A desk lamp (7 keypoints): a base, a swivel, two arm segments and a shade with a handle."""
    u = rng.uniform
    b = Builder(rng)
    post, arm1, arm2 = u(0.08, 0.16), u(0.4, 0.6), u(0.35, 0.55)
    r_base, r_arm = u(0.16, 0.24), u(0.025, 0.04)
    a1 = math.radians(u(50.0, 80.0))  # first arm, from the horizontal, leaning to +x
    a2 = math.radians(u(-40.0, 10.0))  # second arm, from the horizontal, reaching to -x
    shade_len, shade_r = u(0.15, 0.25), u(0.09, 0.15)

    b.joint("base", None, [0, 0, 0])
    b.joint("pivot", "base", [0, post, 0])
    b.joint("swivel", "pivot", [0, post, 0], keypoint=False)
    b.joint("elbow", "swivel", b.p("pivot") + arm1 * np.array([math.cos(a1), math.sin(a1), 0.0]))
    b.joint("wrist", "elbow", b.p("elbow") + arm2 * np.array([-math.cos(a2), math.sin(a2), 0.0]))
    b.joint("head", "wrist", b.p("wrist") + [-0.05, -0.02, 0.0])
    sd = unit([-u(0.2, 0.8), -1.0, 0.0])
    b.joint("shade", "head", b.p("head") + shade_len * sd)
    b.joint("handle", "head", b.p("head") + u(0.08, 0.14) * unit([1.0, 0.6, 0.0]))

    b.bone("base", "pivot", r_base, r_arm * 1.5, group="base")
    b.bone("swivel", "elbow", r_arm * 1.2, r_arm, group="arm1")
    b.bone("elbow", "wrist", r_arm, r_arm * 0.9, group="arm2")
    b.bone("wrist", "head", r_arm, r_arm * 1.2, group="arm2")
    b.bone("head", "shade", r_arm * 1.5, shade_r, group="shade")
    b.bone("head", "handle", r_arm * 0.9, r_arm * 0.7, group="handle")

    X, Y, Z = np.eye(3)
    b.move("swivel", Y, -80, 80)
    b.move("swivel", Z, -35, 25)
    b.move("elbow", Z, -45, 45)
    b.move("wrist", Z, -45, 45)
    b.move("head", Z, -40, 40)
    b.move("head", Y, -35, 35)
    skeleton = [("base", "pivot"), ("pivot", "elbow"), ("elbow", "wrist"), ("wrist", "head"), ("head", "shade"),
                ("head", "handle")]
    facing = rng.choice([0.0, 180.0]) + u(-40.0, 40.0)
    return b.rig(skeleton, tone_axis=Z).rotated(yaw(facing))


def random_tree(rng: np.random.Generator) -> Rig:
    """A random tree skeleton: 5-20 joints, random branch lengths, angles and thickness, random motion."""
    u = rng.uniform
    b = Builder(rng)
    n = int(rng.integers(5, 21))
    r_root = u(0.05, 0.16)
    radius = [r_root]
    dirs = [random_unit(rng)]
    children = [0]
    b.joint("j00", None, [0, 0, 0])
    for j in range(1, n):
        weights = np.array([(3.0 if c == 0 else 1.0) * (c < 3) for c in children], dtype=np.float64)
        weights[0] *= 1.5
        p = int(rng.choice(len(children), p=weights / weights.sum()))
        if children[p] == 0 and p != 0:  # continue the chain, bending
            d = unit(dirs[p] + rng.normal(size=3) * u(0.2, 0.9))
        else:  # branch off in a new direction, not straight back
            d = random_unit(rng)
            if p != 0 and float(d @ dirs[p]) < -0.3:
                d = unit(d + dirs[p])
        length = u(0.15, 0.5) / math.sqrt(n / 5.0)  # long chains get shorter bones, so they stay thick enough
        b.joint(f"j{j:02d}", f"j{p:02d}", b.pos[p] + length * d)
        radius.append(float(np.clip(radius[p] * u(0.55, 1.0), 0.035, 0.2)))
        dirs.append(d)
        children[p] += 1
        children.append(0)
    for j in range(1, n):
        p = b.parents[j]
        b.bone(f"j{p:02d}", f"j{j:02d}", radius[p], radius[j], group=f"g{j}")
    if u() < 0.5:  # a body blob at the root
        b.sphere("j00", r_root * u(1.2, 2.0), group="g0")
    b.move("j00", np.array([0.0, 1.0, 0.0]), -45, 45)
    for j in range(n):
        if children[j] == 0:
            continue
        for _ in range(int(rng.integers(1, 3))):
            ax = np.cross(dirs[j], random_unit(rng))
            b.move(f"j{j:02d}", ax, -50, 50, amp_frac=(0.4, 1.0))
    skeleton = [(f"j{b.parents[j]:02d}", f"j{j:02d}") for j in range(1, n)]
    return b.rig(skeleton, tone_axis=random_unit(rng))


def hand(rng: np.random.Generator) -> Rig:
    """A hand (21 keypoints: wrist and four joints per finger), palm towards +z; fingers curl and spread."""
    u = rng.uniform
    b = Builder(rng)
    palm, width = u(0.35, 0.45), u(0.22, 0.3)
    r_f = u(0.028, 0.04)
    b.joint("wrist", None, [0, 0, 0])
    fingers = [("index", 1.0), ("middle", 1.08), ("ring", 1.0), ("pinky", 0.8)]
    for i, (name, rel) in enumerate(fingers):
        x = width * (0.5 - i / 3.0)  # index on +x (a right hand seen from the palm side)
        base = np.array([x, palm * (1.0 - 0.08 * abs(i - 1.2)), 0.0])
        d = unit([x * u(0.2, 0.6), 1.0, 0.0])
        seg = [u(0.17, 0.22) * rel, u(0.1, 0.14) * rel, u(0.08, 0.1) * rel]
        b.joint(f"{name}1", "wrist", base)
        b.joint(f"{name}2", f"{name}1", base + seg[0] * d)
        b.joint(f"{name}3", f"{name}2", base + (seg[0] + seg[1]) * d)
        b.joint(f"{name}4", f"{name}3", base + sum(seg) * d)
    tb = np.array([width * 0.45, palm * 0.25, 0.04])
    td = unit([1.0, u(0.6, 1.2), 0.35])
    b.joint("thumb1", "wrist", tb)
    b.joint("thumb2", "thumb1", tb + u(0.14, 0.18) * td)
    b.joint("thumb3", "thumb2", b.p("thumb2") + u(0.1, 0.13) * unit(td + [0, 0.4, 0]))
    b.joint("thumb4", "thumb3", b.p("thumb3") + u(0.08, 0.1) * unit(td + [-0.2, 0.8, 0]))

    for name, _ in fingers:
        b.bone("wrist", f"{name}1", r_f * 2.0, r_f * 1.4, group="palm")
        b.bone(f"{name}1", f"{name}2", r_f * 1.15, r_f, group=f"{name}_a")
        b.bone(f"{name}2", f"{name}3", r_f, r_f * 0.9, group=f"{name}_b")
        b.bone(f"{name}3", f"{name}4", r_f * 0.9, r_f * 0.8, group=f"{name}_b")
    b.bone("index1", "pinky1", r_f * 1.4, drive="wrist", group="palm")
    b.bone("wrist", "thumb1", r_f * 2.0, r_f * 1.5, group="palm")
    b.bone("thumb1", "thumb2", r_f * 1.4, r_f * 1.1, group="thumb_a")
    b.bone("thumb2", "thumb3", r_f * 1.1, r_f, group="thumb_b")
    b.bone("thumb3", "thumb4", r_f, r_f * 0.85, group="thumb_b")

    X, Y, Z = np.eye(3)
    b.move("wrist", X, -35, 35)
    b.move("wrist", Y, -45, 45)
    b.move("wrist", Z, -20, 20)
    wave = rng.uniform() < 0.5  # half the seeds curl the fingers one after the other
    ph0 = rng.uniform(0, 2 * math.pi)
    for i, (name, _) in enumerate(fingers):
        d = b.p(f"{name}2") - b.p(f"{name}1")
        ph = ph0 + 0.7 * i if wave else None
        b.move(f"{name}1", hinge(d, Z), -10, 80, phase=ph)
        b.move(f"{name}1", hinge(d, X), -12, 12)
        b.move(f"{name}2", hinge(d, Z), 0, 95, phase=ph)
        b.move(f"{name}3", hinge(d, Z), 0, 60, phase=ph)
    td2 = b.p("thumb2") - b.p("thumb1")
    b.move("thumb1", hinge(td2, Z), -20, 45)
    b.move("thumb2", hinge(td2, Z), 0, 50)
    b.move("thumb3", hinge(td2, Z), 0, 60)
    skeleton = [("wrist", "thumb1"), ("thumb1", "thumb2"), ("thumb2", "thumb3"), ("thumb3", "thumb4")]
    for name, _ in fingers:
        skeleton += [("wrist", f"{name}1"), (f"{name}1", f"{name}2"), (f"{name}2", f"{name}3"),
                     (f"{name}3", f"{name}4")]
    order = ["wrist"] + [f"{n}{k}" for n in ("thumb", "index", "middle", "ring", "pinky") for k in range(1, 5)]
    flip = rng.choice([0.0, 180.0])  # palm or back of the hand towards the reference camera
    return b.rig(skeleton, tone_axis=Z, order=order).rotated(yaw(flip + u(-35.0, 35.0)))


def bird(rng: np.random.Generator) -> Rig:
    """A bird (15 keypoints) facing +x with wings spread sideways; the wings flap, the head turns."""
    u = rng.uniform
    b = Builder(rng)
    body, r_body = u(0.35, 0.5), u(0.1, 0.15)
    arm1, arm2 = u(0.25, 0.35), u(0.3, 0.45)
    r_wing = u(0.03, 0.045)
    b.joint("body", None, [0, 0, 0])
    b.joint("neck", "body", [body * 0.45, r_body * 0.6, 0])
    b.joint("head", "neck", b.p("neck") + u(0.1, 0.2) * unit([0.4, 1.0, 0.0]))
    b.joint("beak", "head", b.p("head") + u(0.1, 0.18) * unit([1.0, u(-0.4, 0.0), 0.0]))
    b.joint("tail", "body", [-body * 0.5 - u(0.15, 0.3), u(-0.05, 0.1), 0])
    sweep = u(0.0, 0.35)
    for s, side in (("l", 1), ("r", -1)):
        z = -side  # facing +x with +y up, the bird's left is -z
        sh = np.array([body * 0.15, r_body * 0.5, z * r_body * 0.7])
        b.joint(f"{s}_shoulder", "body", sh)
        b.joint(f"{s}_elbow", f"{s}_shoulder", sh + arm1 * unit([-sweep, 0.15, z]))
        b.joint(f"{s}_wingtip", f"{s}_elbow", b.p(f"{s}_elbow") + arm2 * unit([-sweep - 0.3, 0.0, z]))
        hip = np.array([-body * 0.1, -r_body * 0.6, z * r_body * 0.4])
        b.joint(f"{s}_hip", "body", hip, keypoint=False)
        b.joint(f"{s}_knee", f"{s}_hip", hip + u(0.08, 0.14) * unit([0.3, -1.0, 0.0]))
        b.joint(f"{s}_foot", f"{s}_knee", b.p(f"{s}_knee") + u(0.1, 0.16) * unit([-0.2, -1.0, 0.0]))

    b.bone("body", "neck", r_body, r_body * 0.6, group="body")
    b.bone("body", "tail", r_body * 0.9, r_body * 0.3, group="tail")
    b.bone("neck", "head", r_body * 0.5, r_body * 0.55, group="neck")
    b.sphere("head", r_body * u(0.6, 0.8), group="head")
    b.bone("head", "beak", r_body * 0.3, 0.01, group="beak")
    for s, side in (("l", 1), ("r", -1)):
        b.bone(f"{s}_shoulder", f"{s}_elbow", r_wing * 1.6, r_wing * 1.3, group="wing", side=side)
        b.bone(f"{s}_elbow", f"{s}_wingtip", r_wing * 1.3, r_wing * 0.6, group="wingtip", side=side)
        b.bone(f"{s}_hip", f"{s}_knee", r_body * 0.3, r_body * 0.2, group="leg", side=side)
        b.bone(f"{s}_knee", f"{s}_foot", r_body * 0.15, r_body * 0.15, group="leg", side=side)

    X, Y, Z = np.eye(3)
    b.move("body", Y, -35, 35)
    b.move("body", Z, -20, 20)
    b.move("neck", Z, -25, 25)
    b.move("head", Y, -45, 45)
    flap = rng.uniform(0, 2 * math.pi)
    for s, side in (("l", 1), ("r", -1)):
        b.move(f"{s}_shoulder", side * X, -50, 50, phase=flap)  # both wings together, mirrored
        b.move(f"{s}_elbow", side * X, -30, 30, phase=flap + 0.6)
        b.move(f"{s}_knee", Z, -30, 30)
    skeleton = [("beak", "head"), ("head", "neck"), ("neck", "body"), ("body", "tail"),
                ("body", "l_shoulder"), ("l_shoulder", "l_elbow"), ("l_elbow", "l_wingtip"),
                ("body", "r_shoulder"), ("r_shoulder", "r_elbow"), ("r_elbow", "r_wingtip"),
                ("body", "l_knee"), ("l_knee", "l_foot"), ("body", "r_knee"), ("r_knee", "r_foot")]
    order = ["beak", "head", "neck", "body", "tail", "l_shoulder", "r_shoulder", "l_elbow", "r_elbow",
             "l_wingtip", "r_wingtip", "l_knee", "r_knee", "l_foot", "r_foot"]
    facing = rng.choice([0.0, 180.0]) + u(-40.0, 40.0)
    return b.rig(skeleton, tone_axis=-Y, order=order).rotated(yaw(facing))
