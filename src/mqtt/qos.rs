//! The one conversion between the codec's QoS (`rmqtt_codec::types::QoS`, re-exported as
//! [`super::QoS`]) and the stored one ([`crate::store::Qos`]). Both are the same three levels;
//! they stay two types because the store must not depend on the MQTT codec. It lives here, in the
//! layer that wraps the codec, so that the broker converts with `.into()` and never by hand.

use super::QoS;
use crate::store::Qos;

impl From<Qos> for QoS {
    fn from(qos: Qos) -> Self {
        match qos {
            Qos::AtMostOnce => QoS::AtMostOnce,
            Qos::AtLeastOnce => QoS::AtLeastOnce,
            Qos::ExactlyOnce => QoS::ExactlyOnce,
        }
    }
}

impl From<QoS> for Qos {
    fn from(qos: QoS) -> Self {
        match qos {
            QoS::AtMostOnce => Qos::AtMostOnce,
            QoS::AtLeastOnce => Qos::AtLeastOnce,
            QoS::ExactlyOnce => Qos::ExactlyOnce,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_level_converts_to_the_same_level_and_back() {
        for level in 0..=2 {
            let stored = Qos::from_u8(level).expect("a QoS level");
            let codec = QoS::from(stored);
            assert_eq!(u8::from(codec), level);
            assert_eq!(Qos::from(codec), stored);
        }
    }
}
